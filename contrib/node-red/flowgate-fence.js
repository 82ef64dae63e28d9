// flowgate epoch fence for Node-RED: with several flowgate replicas, only the controller may
// start or stop flows, and every such command carries its epoch (X-Flowgate-Epoch). This
// middleware remembers the highest epoch it has seen and refuses a state change that carries
// an older one with 409, so a controller that was frozen or cut off and lost its leadership
// cannot change anything here even if it still believes it leads.
//
// In settings.js:   httpAdminMiddleware: require("/path/to/flowgate-fence.js"),
// (if you already have an httpAdminMiddleware, call this one first from yours).
//
// The highest epoch is kept in memory: a restarted instance accepts the next controller's
// epoch it sees, and flowgate's controller sends its epoch with every probe, so that happens
// within one probe interval.
//
// Dead-man switch (off unless FLOWGATE_DEADMAN_MS is set in this instance's environment, to
// the same value as flowgate's failover.deadman): flowgate sends a heartbeat
// (X-Flowgate-Heartbeat) with every probe of the active instance and with the start of its
// flows, from a single flowgate or from the controller of replicas. When this instance runs
// flows and no heartbeat has arrived for FLOWGATE_DEADMAN_MS, it stops its own flows through
// the runtime's flow-state API (and boots stopped after that). flowgate, when it cannot
// confirm that an instance stopped, waits until that instance's switch must have fired
// before it starts another: so a partition that hides a running instance from flowgate never
// ends with two instances running flows.
let highest = 0;
let lastHeartbeat = Date.now();
const deadmanMs = Number(process.env.FLOWGATE_DEADMAN_MS || 0);

if (Number.isFinite(deadmanMs) && deadmanMs > 0) {
    const timer = setInterval(async () => {
        const silent = Date.now() - lastHeartbeat;
        if (silent <= deadmanMs) return;
        try {
            // The runtime of this very process (resolved from Node-RED's own folder).
            const runtime = require.main.require("@node-red/runtime");
            const { state } = await runtime.flows.getState({});
            if (state === "start" || state === "safe") {
                console.warn(`[flowgate-fence] no heartbeat from flowgate for ${silent} ms (dead-man switch ${deadmanMs} ms): stopping flows`);
                await runtime.flows.setState({ state: "stop" });
            }
        } catch (e) {
            console.error("[flowgate-fence] dead-man switch:", e && e.message ? e.message : e);
        }
    }, Math.max(50, Math.min(250, Math.floor(deadmanMs / 8))));
    timer.unref();
}

module.exports = function flowgateFence(req, res, next) {
    const header = req.headers["x-flowgate-epoch"];
    const heartbeat = req.headers["x-flowgate-heartbeat"] !== undefined;
    if (header === undefined) {
        if (heartbeat) lastHeartbeat = Date.now();
        return next();
    }
    const epoch = Number(header);
    if (!Number.isSafeInteger(epoch) || epoch < 0) {
        res.status(400).json({ code: "bad_epoch", message: "X-Flowgate-Epoch must be a whole number" });
        return;
    }
    if (epoch < highest) {
        if (req.method === "GET" || req.method === "HEAD") return next();
        res.status(409).json({ code: "stale_epoch", message: `epoch ${epoch} is older than ${highest}` });
        return;
    }
    highest = epoch;
    if (heartbeat) lastHeartbeat = Date.now();
    next();
};
