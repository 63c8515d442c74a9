// A phone-like xmpp.js client loses its connection (the socket is destroyed, no
// </stream>); another xmpp.js client sends it three messages meanwhile; the first one
// reconnects on its own and resumes its session inline in SASL2, authenticating with
// the FAST token it got at login. Prints one JSON line.
//
//   node sm_resume.mjs PORT|URL USER_A USER_B PASSWORD     (NODE_EXTRA_CA_CERTS = server CA)
import { client, xml } from "@xmpp/client";

const [port, userA, userB, password] = process.argv.slice(2);

function connect(username, agentId) {
  const xmpp = client({
    service: port.includes("://") ? port : `xmpp://127.0.0.1:${port}`,
    domain: "localhost",
    username,
    password,
    resource: "phone",
    userAgent: xml("user-agent", { id: agentId }),
  });
  let saved = null;
  xmpp.fast.fetchToken = async () => saved;
  xmpp.fast.saveToken = async (token) => {
    saved = token;
  };
  xmpp.on("error", () => {});
  return xmpp;
}

function within(ms, promise, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)),
  ]);
}

const phone = connect(userA, "0b6f2c1e-8d3a-4f5b-9c7e-1a2b3c4d5e6f");
const friend = connect(userB, "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b");
const bodies = [];
phone.on("stanza", (stanza) => {
  const body = stanza.is("message") ? stanza.getChildText("body") : null;
  if (body) bodies.push(body);
});
const phoneOnline = new Promise((resolve) => phone.on("online", resolve));
await phone.start();
const before = (await phoneOnline).toString();
await friend.start();
await phone.send(xml("presence"));

const resumed = new Promise((resolve) => phone.streamManagement.on("resumed", resolve));
phone.reconnect.delay = 1500;
const raw = phone.socket.socket; // signal lost: a TCP socket destroyed, a WebSocket dropped
if (raw.destroy) raw.destroy();
else raw.close();
for (const i of [0, 1, 2]) {
  await friend.send(xml("message", { to: before, type: "chat" }, xml("body", {}, `away ${i}`)));
}
await within(15000, resumed, "resumption");
await within(10000, (async () => {
  while (bodies.length < 3) await new Promise((r) => setTimeout(r, 50));
})(), "messages");
await new Promise((r) => setTimeout(r, 300)); // a duplicate would arrive now
console.log(JSON.stringify({ before, after: phone.jid.toString(), bodies }));
await friend.stop();
await phone.stop();
process.exit(0);
