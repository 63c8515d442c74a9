// xmpp.js logs in to xmppd twice with one client installation (user-agent id):
// first with the password over SASL2 + Bind 2, asking for a FAST token, with stream
// management enabled inline; then with the token alone (a wrong password is given,
// so only the token can succeed). Prints one JSON line per login.
//
//   node sasl2_fast.mjs PORT|URL USERNAME PASSWORD     (NODE_EXTRA_CA_CERTS = server CA)
import { client, xml } from "@xmpp/client";

const [port, username, password] = process.argv.slice(2);
const agentId = "6f1c3d9a-2b7e-4c1a-9d4e-8a5b7c2e1f30";
let savedToken = null;

async function login(pass, label) {
  const xmpp = client({
    service: port.includes("://") ? port : `xmpp://127.0.0.1:${port}`,
    domain: "localhost",
    username,
    password: pass,
    resource: "interop",
    userAgent: xml("user-agent", { id: agentId }, xml("software", {}, "xmpp.js")),
  });
  xmpp.fast.fetchToken = async () => savedToken;
  xmpp.fast.saveToken = async (token) => {
    savedToken = token;
  };
  const errors = [];
  xmpp.on("error", (err) => errors.push(String(err)));
  const online = new Promise((resolve) => xmpp.on("online", resolve));
  await xmpp.start();
  const address = await online;
  const pong = await xmpp.iqCaller.request(
    xml("iq", { type: "get", to: "localhost" }, xml("ping", "urn:xmpp:ping")),
    10000,
  );
  console.log(
    JSON.stringify({
      label,
      jid: address.toString(),
      sasl2: xmpp.sasl2 !== undefined,
      streamManagement: xmpp.streamManagement.enabled,
      tokenMechanism: savedToken?.mechanism ?? null,
      ping: pong.attrs.type,
      errors,
    }),
  );
  await xmpp.stop();
}

await login(password, "password");
await login("not-the-password", "token");
process.exit(0);
