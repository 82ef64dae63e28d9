// Node-RED settings.js for an instance behind flowgate. Merge these keys into your own file.
module.exports = {
    // The same explicit secret on every instance, so credentials can move between them.
    credentialSecret: process.env.NODE_RED_CREDENTIAL_SECRET,

    // flowgate starts and stops flows; the editor must not offer Start/Stop itself.
    runtimeState: { enabled: true, ui: false },

    // With adminAuth: flowgate's own token (the backend's `token` in flowgate.yaml), and editor
    // logins made through flowgate accepted by every instance, so an editor stays logged in
    // across a failover. FLOWGATE_ADMIN is flowgate's admin listener as this instance reaches it:
    // http://127.0.0.1:9901 on the same host; from another host https://flowgate-host:9901 with
    // admin.tls in flowgate.yaml, and the CA (or the self-signed certificate) of that listener in
    // NODE_EXTRA_CA_CERTS of the Node-RED process, so this hook only believes flowgate itself.
    adminAuth: {
        type: "credentials",
        users: [{ username: "admin", password: "<bcrypt hash>", permissions: "*" }],
        tokens: async function (token) {
            if (token === process.env.FLOWGATE_TOKEN) return { username: "flowgate", permissions: "*" };
            try {
                // FLOWGATE_INSTANCE: this instance's backend id in flowgate.yaml. flowgate then
                // refuses a login this instance issued itself and no longer accepts (its user
                // deleted, the token revoked), and asks the issuer before vouching to others.
                const r = await fetch(process.env.FLOWGATE_ADMIN + "/auth/token-info", {
                    headers: { authorization: "Bearer " + token, "x-flowgate-instance": process.env.FLOWGATE_INSTANCE || "" },
                    signal: AbortSignal.timeout(2000),
                });
                if (r.ok) return await r.json(); // { username, permissions }
            } catch (e) { /* flowgate unreachable: only this instance's own logins work */ }
            return null;
        },
    },

    // With several flowgate replicas: refuse flow-state commands of a deposed controller
    // (a copy of contrib/node-red/flowgate-fence.js beside this file; harmless with one).
    httpAdminMiddleware: require("./flowgate-fence.js"),

    // Keep the deploy limit in line with flowgate's deploy.max_body (default 5MiB).
    apiMaxLength: "5mb",
};
