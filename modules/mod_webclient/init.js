// Starts Converse.js with the settings the server put in the page (a JSON data block,
// so the page's Content-Security-Policy needs no inline script).

// Converse's full-screen footer shows its sponsors' logos, loaded from conversejs.org:
// every visitor's address would reach a third party. An element of that name defined
// first is kept by Converse (it registers only names not yet taken), so it stays empty.
if (!customElements.get("converse-footer")) {
  customElements.define("converse-footer", class extends HTMLElement {});
}

const block = document.getElementById("xmppd-converse-settings");
window.converse.initialize(JSON.parse(block.textContent));
