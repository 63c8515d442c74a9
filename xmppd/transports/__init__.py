"""Transports: TCP with STARTTLS or direct TLS (WebSocket and BOSH come later)."""
