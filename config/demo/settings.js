// Node-RED settings for an instance behind flowgate (demo). The lines that matter for HA:
module.exports = {
    uiHost: "127.0.0.1",
    flowFile: "flows.json",
    // The same explicit secret on every instance, so credentials can move between them.
    credentialSecret: "change-me-to-a-long-random-string",
    // flowgate starts and stops flows through the runtime flow-state API; the editor must
    // not offer Start/Stop itself.
    runtimeState: { enabled: true, ui: false },
    // With several flowgate replicas: refuse flow-state commands of a deposed controller
    // (contrib/node-red/flowgate-fence.js; harmless with one flowgate).
    httpAdminMiddleware: require("./flowgate-fence.js"),
    // With adminAuth, give flowgate a static token (the same value as the backend's token in
    // flowgate.yaml), e.g.:
    // adminAuth: { type: "credentials", users: [...],
    //              tokens: [{ token: process.env.FLOWGATE_TOKEN, user: "admin", scope: ["*"] }] },
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: true, ui: true },
    logging: { console: { level: "info", metrics: false, audit: false } },
    editorTheme: { tours: false, projects: { enabled: false } },
};
