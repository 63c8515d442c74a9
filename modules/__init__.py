"""xmppd feature modules: one ``mod_<feature>.py`` each, importing only ``xmppd.api``."""
