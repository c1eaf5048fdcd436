//! Real Redis for tests: a single `redis-server` on an ephemeral loopback port (no automatic
//! persistence: `--save '' --appendonly no`; `restart` saves explicitly so history survives),
//! and a 3-node Redis Cluster (`--cluster-enabled yes`, `redis-cli --cluster create`).
//! A missing `redis-server` fails the test loudly: nothing is skipped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Time allowed for Redis to answer PING after starting.
const START_TIMEOUT: Duration = Duration::from_secs(10);

fn require(binary: &str) {
    let found = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{binary} is required by the Redis engine tests (apt-get install redis-server redis-tools)"
    );
}

/// A free loopback port whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Sends one inline command and returns the raw reply (for PING / SHUTDOWN / CLUSTER INFO).
pub fn raw_command(port: u16, command: &str) -> Option<String> {
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(300)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buffer = vec![0u8; 8192];
    let read = stream.read(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..read]).into_owned())
}

/// One `redis-server` process (killed on drop).
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    cluster: bool,
    password: Option<String>,
}

impl RedisServer {
    /// Starts a standalone Redis on a fresh port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false, None)
    }

    /// Starts a standalone Redis that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_with(false, Some(password.to_owned()))
    }

    fn start_with(cluster: bool, password: Option<String>) -> RedisServer {
        require("redis-server");
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            cluster,
            password,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        self.child = Some(command.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + START_TIMEOUT;
        // Without the password PING answers NOAUTH: alive all the same.
        while raw_command(self.port, "PING")
            .is_none_or(|r| !r.contains("PONG") && !r.contains("NOAUTH"))
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops Redis after saving its data (SHUTDOWN SAVE), waits for the exit.
    pub fn stop_saving(&mut self) {
        let shutdown = match &self.password {
            Some(password) => format!("AUTH {password}\r\nSHUTDOWN SAVE"),
            None => "SHUTDOWN SAVE".to_owned(),
        };
        let _ = raw_command(self.port, &shutdown);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + START_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port with the saved data.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Kills Redis (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-master Redis Cluster (no replicas).
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes and joins them; waits for `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        require("redis-cli");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with(true, None))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        for node in &nodes {
            while raw_command(node.port, "CLUSTER INFO")
                .is_none_or(|r| !r.contains("cluster_state:ok"))
            {
                assert!(Instant::now() < deadline, "cluster did not reach state ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    /// The YAML list of seed addresses.
    pub fn addresses_yaml(&self) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("'{}'", n.url()))
            .collect();
        format!("[{}]", list.join(", "))
    }
}

/// A loopback TCP forwarder to Redis that holds every chunk a client sends for `delay` before
/// passing it on (answers come back at once): one replica's Redis writes trail another's
/// reads. Stops with the test's runtime.
pub struct SlowRedisLink {
    /// Address to give the replica instead of Redis's.
    pub addr: SocketAddr,
}

impl SlowRedisLink {
    /// Forwards to `redis` with `delay` on the way in.
    pub async fn start(redis: &RedisServer, delay: Duration) -> SlowRedisLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the slow link");
        let addr = listener.local_addr().expect("slow link address");
        let target: SocketAddr = ([127, 0, 0, 1], redis.port).into();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward_slowly(client, target, delay));
            }
        });
        SlowRedisLink { addr }
    }

    /// `redis://` URL of the link.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

async fn forward_slowly(client: tokio::net::TcpStream, target: SocketAddr, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let inbound = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        while let Ok(read) = client_read.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            tokio::time::sleep(delay).await;
            if server_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
    };
    let outbound = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    tokio::join!(inbound, outbound);
}

/// One Redis Sentinel (`redis-server --sentinel`) watching `master` under `name` (killed on
/// drop).
pub struct RedisSentinel {
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl RedisSentinel {
    /// Starts a Sentinel that monitors `master` as `name` (quorum 1) and waits until it
    /// answers for it.
    pub fn start(master: &RedisServer, name: &str) -> RedisSentinel {
        require("redis-server");
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {name} 2000\n",
                dir.path().display(),
                master.port
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
        let sentinel = RedisSentinel {
            port,
            _dir: dir,
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let question = format!("SENTINEL get-master-addr-by-name {name}");
        while raw_command(port, &question).is_none_or(|r| !r.contains(&master.port.to_string())) {
            assert!(
                Instant::now() < deadline,
                "sentinel on {port} did not report master {name}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sentinel
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
