//! Runs an instance's restart command: the program and its arguments as configured, no
//! shell, stdin closed, its output in flowgate's own (the journal under systemd). It gets
//! `FLOWGATE_INSTANCE` and `FLOWGATE_RESTART_REASON` in its environment. A command still
//! running at its timeout is killed (with its process group) and the restart counts failed.

use crate::config::RestartCommand;

pub async fn run(cmd: &RestartCommand, instance: &str, reason: &str) -> Result<(), String> {
    let (program, args) = cmd.argv.split_first().expect("validated: a program is given");
    let mut c = tokio::process::Command::new(program);
    c.args(args)
        .env("FLOWGATE_INSTANCE", instance)
        .env("FLOWGATE_RESTART_REASON", reason)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        // Its own process group: a timeout ends what it started too.
        .process_group(0);
    let mut child = c.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(cmd.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
        Ok(Err(e)) => Err(format!("waiting for {program}: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                // The group this function created, and nothing else.
                let group = format!("-{pid}");
                let _ = tokio::process::Command::new("kill").args(["-KILL", "--", &group]).status().await;
            }
            let _ = child.kill().await;
            Err(format!("{program} did not end within {:?}; killed", cmd.timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cmd(argv: &[&str], timeout: Duration) -> RestartCommand {
        RestartCommand { argv: argv.iter().map(|s| s.to_string()).collect(), timeout }
    }

    #[tokio::test]
    async fn success_failure_and_timeout() {
        assert_eq!(run(&cmd(&["true"], Duration::from_secs(5)), "a", "operator").await, Ok(()));
        let e = run(&cmd(&["false"], Duration::from_secs(5)), "a", "operator").await.unwrap_err();
        assert!(e.contains("exited with"), "{e}");
        let e = run(&cmd(&["/nonexistent/restart"], Duration::from_secs(5)), "a", "operator").await.unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
        let t = std::time::Instant::now();
        let e = run(&cmd(&["sleep", "30"], Duration::from_millis(200)), "a", "operator").await.unwrap_err();
        assert!(e.contains("did not end"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_command_learns_which_instance_and_why() {
        let c = cmd(
            &["sh", "-c", "test \"$FLOWGATE_INSTANCE/$FLOWGATE_RESTART_REASON\" = nr-b/hang"],
            Duration::from_secs(5),
        );
        assert_eq!(run(&c, "nr-b", "hang").await, Ok(()));
        assert!(run(&c, "nr-a", "hang").await.is_err());
    }
}
