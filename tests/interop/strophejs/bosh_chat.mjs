// Strophe.js logs in over BOSH, enables nothing else, sends a chat message to PEER and
// waits for the answer, then disconnects. Prints one JSON line.
//
//   node bosh_chat.mjs BOSH_URL JID PASSWORD PEER
import NodeXHR from "xhr2";

// BOSH uses XMLHttpRequest, which Node lacks; xhr2 has no responseXML, which
// Strophe's BOSH reads, so parse the text with the DOMParser Strophe's Node shim
// installs.
class XMLHttpRequest extends NodeXHR {
  get responseXML() {
    const text = this.responseText;
    return text ? new globalThis.DOMParser().parseFromString(text, "text/xml") : null;
  }
}
globalThis.XMLHttpRequest = XMLHttpRequest;
const { Strophe, $msg, $pres } = await import("strophe.js");

Strophe.setLogLevel(Strophe.LogLevel.WARN); // its debug log goes to stdout
const [url, jid, password, peer] = process.argv.slice(2);
const conn = new Strophe.Connection(url);
const statuses = [];

function within(ms, promise, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)),
  ]);
}

let onDisconnected = () => {};
const disconnected = new Promise((resolve) => {
  onDisconnected = resolve;
});
const connected = new Promise((resolve, reject) => {
  conn.connect(jid, password, (status) => {
    statuses.push(status);
    if (status === Strophe.Status.CONNECTED) resolve();
    if (status === Strophe.Status.AUTHFAIL || status === Strophe.Status.CONNFAIL) {
      reject(new Error(`status ${status}`));
    }
    if (status === Strophe.Status.DISCONNECTED) onDisconnected();
  });
});
await within(15000, connected, "login");
const reply = new Promise((resolve) => {
  conn.addHandler(
    (message) => {
      const body = message.getElementsByTagName("body")[0];
      if (body) resolve(body.textContent);
      return true;
    },
    null,
    "message",
    "chat",
  );
});
conn.send($pres());
conn.send($msg({ to: peer, type: "chat" }).c("body").t("hello from strophe"));
const answer = await within(15000, reply, "reply");
const bound = conn.jid;
conn.disconnect("bye");
await within(10000, disconnected, "disconnect");
console.log(JSON.stringify({ jid: bound, answer }));
process.exit(0);
