// Start fauxqs bound to 127.0.0.1 only, without per-request logging.
// fauxqs's own cli.js listens on 0.0.0.0 and logs every request; the benchmark wants neither.
// Usage: FAUXQS_PORT=4577 node bench/fauxqs_local.mjs
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function patchedListen(...args) {
  const first = args[0];
  if (first && typeof first === "object" && (first.host === "0.0.0.0" || first.host === "::" || first.host === undefined)) {
    args[0] = { ...first, host: "127.0.0.1" };
  } else if (typeof first === "number" && (args[1] === "0.0.0.0" || typeof args[1] !== "string")) {
    args = [first, "127.0.0.1", ...args.slice(typeof args[1] === "string" ? 2 : 1)];
  }
  return listen.apply(this, args);
};

const { startFauxqs } = await import("fauxqs");
const server = await startFauxqs({ logger: process.env.FAUXQS_LOGGER === "true" });
console.log(`fauxqs listening on ${server.address}`);

const stop = async () => {
  try {
    await server.stop();
  } finally {
    process.exit(0);
  }
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
