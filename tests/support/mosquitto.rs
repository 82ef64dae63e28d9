//! A real mosquitto broker on a free loopback port (Debian's `mosquitto`, installed by
//! `scripts/install-packages.sh`), and the flow that makes Node-RED depend on it: MQTT in
//! (QoS 1, fixed client id, persistent session) → function → MQTT out (QoS 1), in a flow of
//! about 200 nodes. Processes are killed (by PID) when dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::node_red::{free_port, temp_dir};

pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Mosquitto {
    pub async fn start() -> Self {
        let port = free_port();
        let dir = temp_dir("mosquitto");
        let conf = dir.join("mosquitto.conf");
        // Sessions and their queued QoS 1 messages live in memory for the broker's life.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nlog_dest file {}\nlog_type all\n",
                dir.join("mosquitto.log").display()
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto (apt-get install mosquitto mosquitto-clients)");
        let m = Mosquitto { port, dir, child };
        super::eventually(Duration::from_secs(10), "mosquitto listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        m
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `mosquitto_sub` on `topic` at QoS 1: every message with the time it arrived.
    pub fn subscribe(&self, topic: &str) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1", "-t", topic])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto_sub");
        let out = child.stdout.take().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                g.lock().unwrap().push((Instant::now(), line));
            }
        });
        Subscriber { child, got }
    }

    /// `mosquitto_pub -l` at QoS 1: each line written is one message on `topic`.
    pub fn publisher(&self, topic: &str) -> Publisher {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1", "-t", topic, "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto_pub");
        let stdin = child.stdin.take().unwrap();
        Publisher { child, stdin }
    }
}

fn mosquitto_bin() -> &'static str {
    // Debian installs the broker in /usr/sbin, often not on a user's PATH.
    if std::path::Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- mosquitto log ({}):\n{}", self.dir.display(), self.log_tail());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct Subscriber {
    child: Child,
    pub got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Subscriber {
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Publisher {
    child: Child,
    stdin: ChildStdin,
}

impl Publisher {
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test flows (`tests/fixtures/flows.json`) plus a plant tab: an MQTT broker node with a
/// fixed client id and a persistent session, `plant/in` (QoS 1) → function (prefixes the
/// instance's name) → `plant/out` (QoS 1), and inert function/change/switch/debug chains up
/// to about 200 nodes.
pub fn plant_flows(broker_port: u16) -> serde_json::Value {
    use serde_json::json;
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flows.json");
    let mut flows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(base).unwrap()).unwrap();
    flows.push(json!({"id": "plant_tab", "type": "tab", "label": "plant", "disabled": false, "info": ""}));
    flows.push(json!({
        "id": "plant_broker", "type": "mqtt-broker", "name": "plant broker",
        "broker": "127.0.0.1", "port": broker_port.to_string(), "clientid": "flowgate-plant",
        "autoConnect": true, "usetls": false, "protocolVersion": "4", "keepalive": "15",
        "cleansession": false, "autoUnsubscribe": false,
        "birthTopic": "", "birthQos": "0", "birthPayload": "", "birthMsg": {},
        "closeTopic": "", "closeQos": "0", "closePayload": "", "closeMsg": {},
        "willTopic": "", "willQos": "0", "willPayload": "", "willMsg": {},
        "userProps": "", "sessionExpiry": ""
    }));
    flows.push(json!({
        "id": "plant_in", "type": "mqtt in", "z": "plant_tab", "name": "", "topic": "plant/in", "qos": "1",
        "datatype": "utf8", "broker": "plant_broker", "nl": false, "rap": true, "rh": 0, "inputs": 0,
        "x": 120, "y": 40, "wires": [["plant_fn"]]
    }));
    flows.push(json!({
        "id": "plant_fn", "type": "function", "z": "plant_tab", "name": "process",
        "func": "msg.payload = env.get('FG_NAME') + ' ' + msg.payload;\nreturn msg;",
        "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
        "x": 300, "y": 40, "wires": [["plant_out"]]
    }));
    flows.push(json!({
        "id": "plant_out", "type": "mqtt out", "z": "plant_tab", "name": "", "topic": "plant/out", "qos": "1",
        "retain": "false", "respTopic": "", "contentType": "", "userProps": "", "correl": "", "expiry": "",
        "broker": "plant_broker", "x": 480, "y": 40, "wires": []
    }));
    let mut i = 0;
    while flows.len() < 200 {
        let (f, c, s, d) = (format!("f{i}"), format!("c{i}"), format!("s{i}"), format!("d{i}"));
        let y = 100 + 40 * i;
        flows.push(json!({
            "id": f, "type": "function", "z": "plant_tab", "name": format!("scale {i}"),
            "func": "msg.payload = Number(msg.payload) * 2;\nreturn msg;", "outputs": 1, "timeout": 0,
            "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 120, "y": y, "wires": [[c]]
        }));
        flows.push(json!({
            "id": c, "type": "change", "z": "plant_tab", "name": "", "rules": [{"t": "set", "p": "topic",
            "pt": "msg", "to": format!("line/{i}"), "tot": "str"}], "x": 300, "y": y, "wires": [[s]]
        }));
        flows.push(json!({
            "id": s, "type": "switch", "z": "plant_tab", "name": "", "property": "payload",
            "propertyType": "msg", "rules": [{"t": "gt", "v": "10", "vt": "num"}], "checkall": "true",
            "repair": false, "outputs": 1, "x": 460, "y": y, "wires": [[d]]
        }));
        flows.push(json!({
            "id": d, "type": "debug", "z": "plant_tab", "name": "", "active": false, "tosidebar": true,
            "console": false, "tostatus": false, "complete": "payload", "targetType": "msg",
            "statusVal": "", "statusType": "auto", "x": 620, "y": y, "wires": []
        }));
        i += 1;
    }
    serde_json::Value::Array(flows)
}
