// A socket.io client as a browser runs one: long-polling first, then an upgrade to a
// websocket, cookies kept (a browser sends its cookies with every request). Prints each event
// as a JSON line. Arguments: base URL, socket.io path, how long to run (ms).
const { io } = require("socket.io-client");
const [url, path, runMs] = process.argv.slice(2);
const out = (o) => console.log(JSON.stringify(o));
const socket = io(url, {
  path,
  transports: ["polling", "websocket"],
  withCredentials: true,
  reconnectionDelay: 100,
  reconnectionDelayMax: 400,
  timeout: 5000,
});
// The instance flowgate pinned this session to: its affinity cookie, as the client keeps it.
const pinned = () => {
  const jar = socket.io.engine && socket.io.engine._cookieJar;
  if (!jar) return null;
  for (const [name, c] of jar.cookies) if (name === "flowgate_affinity") return c.value;
  return null;
};
// The upgrade can finish before socket.io's own connect packet is answered, so its listener
// goes on the engine as soon as the engine is open, not on "connect".
socket.io.on("open", () => {
  const engine = socket.io.engine;
  engine.once("upgrade", (t) => out({ ev: "upgrade", sid: engine.id, transport: t.name }));
});
socket.on("connect", () => {
  const engine = socket.io.engine;
  out({ ev: "connect", sid: engine.id, transport: engine.transport.name, pinned: pinned() });
});
socket.on("disconnect", (reason) => out({ ev: "disconnect", reason }));
socket.on("connect_error", (e) => out({ ev: "connect_error", message: e.message }));
setTimeout(() => process.exit(0), Number(runMs));
