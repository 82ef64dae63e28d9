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
let highest = 0;

module.exports = function flowgateFence(req, res, next) {
    const header = req.headers["x-flowgate-epoch"];
    if (header === undefined) return next();
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
    next();
};
