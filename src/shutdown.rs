//! Shutdown: stop accepting, let in-flight requests finish within the grace period, close
//! websockets. Instances are left as they are: the active keeps running its flows, so a
//! restarted flowgate adopts it.

use std::time::Duration;

use tracing::warn;

use crate::app::Handle;

impl Handle {
    pub async fn shutdown(self) {
        let grace = self.app.shared().config.shutdown_grace;
        let rt = &self.app.rt;
        rt.shutdown.cancel();
        rt.tasks.close();
        rt.tunnels.close();
        let all = async {
            rt.tasks.wait().await;
            rt.tunnels.wait().await;
        };
        if tokio::time::timeout(grace + Duration::from_secs(1), all).await.is_err() {
            warn!(grace = ?grace, "shutdown did not complete in time; terminating");
        }
    }
}
