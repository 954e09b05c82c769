//! Thread-per-core serving.
//!
//! Each *shard* is one thread with its own current-thread runtime, its own QUIC endpoint and its
//! own public listeners, all on the same ports (`SO_REUSEPORT`). The kernel spreads public
//! connections over the shards; a classic BPF program attached to the UDP sockets steers every
//! QUIC packet to the shard whose endpoint owns the packet's connection ID (each shard writes its
//! number into the first two bytes of the IDs it issues), so a connector's address may change
//! (NAT rebinding) without its packets landing on an endpoint that does not know them. The
//! registry prefers a tunnel connection of the request's own shard, so a request usually stays
//! on one thread from the public socket to the QUIC socket and back. A work-stealing runtime
//! moved the two halves between workers, a futex wake-up each way (docs/performance.md).

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, HashedConnectionIdGenerator, InvalidCid};
use socket2::{Domain, Protocol, Socket, Type};

/// Shards at most: a shard's number must fit the connection ID's first two bytes.
pub const MAX_SHARDS: usize = 1024;

/// One shard per CPU where packets can be steered (Linux), one elsewhere.
pub fn default_count() -> usize {
    match cfg!(target_os = "linux") {
        true => std::thread::available_parallelism().map_or(1, usize::from),
        false => 1,
    }
}

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The shard the calling thread serves (0 outside shard threads, e.g. in tests with one shard).
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// Mark the calling thread as serving `shard`.
pub fn enter(shard: usize) {
    CURRENT.with(|c| c.set(shard));
}

/// One shard's sockets. Standard-library sockets: each shard registers them with its own runtime.
#[derive(Debug)]
pub struct ShardSockets {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
    pub tunnel: UdpSocket,
}

/// Where to listen; `None` turns a public listener off.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub tunnel: SocketAddr,
}

/// Bind `shards` sets of sockets on the same addresses. With one shard the sockets are plain
/// (the kernel refuses a taken port as usual); with more, each address is first claimed by a
/// plain socket, which refuses a port something else listens on and turns port 0 into a free
/// port (a shared socket bound to port 0 may be handed a port another group already holds).
pub fn bind(addrs: Addresses, shards: usize) -> Result<Vec<ShardSockets>> {
    let shards = shards.clamp(1, MAX_SHARDS);
    if shards == 1 {
        return bind_group(addrs, 1);
    }
    // A claimed port is free again until the group binds it, and another process may take it in
    // between. A port the caller named is then taken and the error stands; for port 0 ("any
    // port") the kernel is simply asked for another one.
    let any_port = [addrs.http, addrs.https, Some(addrs.tunnel)]
        .into_iter()
        .flatten()
        .any(|a| a.port() == 0);
    let mut attempts = 1;
    loop {
        match claim(addrs).and_then(|claimed| bind_group(claimed, shards)) {
            Err(err) if any_port && attempts < PORT_0_ATTEMPTS && addr_in_use(&err) => attempts += 1,
            result => return result,
        }
    }
}

/// How often `bind` asks the kernel for fresh ports when one it picked was taken before use.
const PORT_0_ATTEMPTS: usize = 8;

/// The addresses with every port claimed: one plain set of sockets, held until all its ports
/// are known, so two port-0 listeners never get the same port.
fn claim(addrs: Addresses) -> Result<Addresses> {
    let claimed = bind_set(addrs, false)?;
    Ok(Addresses {
        http: claimed.http.map(|s| s.local_addr()).transpose()?,
        https: claimed.https.map(|s| s.local_addr()).transpose()?,
        tunnel: claimed.tunnel.local_addr()?,
    })
}

fn bind_group(addrs: Addresses, shards: usize) -> Result<Vec<ShardSockets>> {
    let shared = shards > 1;
    let out = (0..shards)
        .map(|_| bind_set(addrs, shared))
        .collect::<Result<Vec<_>>>()?;
    if shared {
        steer_quic(&out[0].tunnel, shards)
            .context("attaching the QUIC steering program (--worker-threads 1 avoids it)")?;
    }
    Ok(out)
}

/// One socket per address; `shared` sockets join the port's `SO_REUSEPORT` group.
fn bind_set(addrs: Addresses, shared: bool) -> Result<ShardSockets> {
    let tcp = |addr: Option<SocketAddr>, flag| {
        addr.map(|a| tcp_socket(a, shared).with_context(|| taken(flag, a)))
            .transpose()
    };
    Ok(ShardSockets {
        http: tcp(addrs.http, "--http")?,
        https: tcp(addrs.https, "--https")?,
        tunnel: udp_socket(addrs.tunnel, shared).with_context(|| taken("--tunnel", addrs.tunnel))?,
    })
}

fn addr_in_use(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::AddrInUse)
}

fn taken(flag: &str, addr: SocketAddr) -> String {
    format!("binding {flag} {addr} (is another edge running?)")
}

fn tcp_socket(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `TcpListener::bind`: a restart must not wait out old connections' TIME-WAIT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(shared)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Buffers of a tunnel socket. When an edge restarts, its connectors come back at once: a burst
/// of thousands of 1.2 KB Initials, which the kernel's default 208 KiB would mostly drop (each
/// drop costs a connector a retransmit timeout). The kernel caps it at `net.core.rmem_max`.
const TUNNEL_SOCKET_BUFFER: usize = 8 << 20;

fn udp_socket(addr: SocketAddr, shared: bool) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only costs retransmits.
    let _ = socket.set_recv_buffer_size(TUNNEL_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(TUNNEL_SOCKET_BUFFER);
    socket.set_reuse_port(shared)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The steering program: the packet's destination connection ID starts at byte 1 of a short
/// header and byte 6 of a long one; its first two bytes modulo the shard count pick the socket
/// (sockets are numbered in the order they joined the group, which is shard order). A client's
/// first Initial carries an ID the client chose at random: it lands on some shard, which then
/// issues IDs of its own number, and the connection stays there.
#[cfg(target_os = "linux")]
fn steering_program(shards: usize) -> [libc::sock_filter; 7] {
    const LDB_ABS: u16 = 0x30; // A = packet[k]
    const LDH_ABS: u16 = 0x28; // A = packet[k..k+2], big-endian
    const JSET: u16 = 0x45; // if A & k goto jt else jf
    const JA: u16 = 0x05; // goto +k
    const MOD: u16 = 0x94; // A %= k
    const RET_A: u16 = 0x16; // return A
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        op(LDB_ABS, 0, 0, 0),
        op(JSET, 2, 0, 0x80), // long header?
        op(LDH_ABS, 0, 0, 1),
        op(JA, 0, 0, 1),
        op(LDH_ABS, 0, 0, 6),
        op(MOD, 0, 0, shards as u32),
        op(RET_A, 0, 0, 0),
    ]
}

#[cfg(not(target_os = "linux"))]
fn steer_quic(_: &UdpSocket, _: usize) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "steering QUIC packets to shards needs Linux",
    ))
}

#[cfg(target_os = "linux")]
fn steer_quic(socket: &UdpSocket, shards: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut program = steering_program(shards);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // The kernel copies the program during the call; `fprog` and `program` outlive it.
    #[allow(unsafe_code, reason = "setsockopt with a pointer to a live sock_fprog")]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Connection IDs whose first two bytes name their shard (modulo the shard count), signed like
/// quinn's hashed IDs so that every shard, and a restarted edge, recognises them.
pub struct ShardCids {
    inner: HashedConnectionIdGenerator,
    shard: u16,
    shards: u16,
}

impl ShardCids {
    pub fn new(key: u64, shard: usize, shards: usize) -> Self {
        Self {
            inner: HashedConnectionIdGenerator::from_key(key),
            shard: shard as u16,
            shards: shards.clamp(1, MAX_SHARDS) as u16,
        }
    }
}

/// The shard a connection ID belongs to, as the steering program computes it.
pub fn shard_of(cid: &[u8], shards: usize) -> usize {
    match cid {
        [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])) % shards.max(1),
        _ => 0,
    }
}

impl ConnectionIdGenerator for ShardCids {
    fn generate_cid(&mut self) -> ConnectionId {
        // The leading bytes are a random nonce: on average `shards` draws find one of ours.
        loop {
            let cid = self.inner.generate_cid();
            if shard_of(&cid, self.shards.into()) == usize::from(self.shard) {
                return cid;
            }
        }
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        self.inner.validate(cid)
    }

    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.inner.cid_lifetime()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_name_their_shard() {
        for shard in 0..3 {
            let mut cids = ShardCids::new(7, shard, 3);
            for _ in 0..50 {
                let cid = cids.generate_cid();
                assert_eq!(shard_of(&cid, 3), shard);
                assert!(cids.validate(&cid).is_ok());
            }
        }
    }

    /// The kernel runs the program: packets sent to the shared port arrive at the socket of the
    /// shard their connection ID names, whatever address they come from.
    #[cfg(target_os = "linux")]
    #[test]
    fn packets_reach_the_shard_their_connection_id_names() {
        let shards = 3;
        let sockets = bind(
            Addresses {
                http: None,
                https: None,
                tunnel: "127.0.0.1:0".parse().unwrap(),
            },
            shards,
        )
        .unwrap();
        let port = sockets[0].tunnel.local_addr().unwrap();
        for s in &sockets {
            assert_eq!(s.tunnel.local_addr().unwrap(), port);
            s.tunnel.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let mut cids: Vec<ShardCids> = (0..shards).map(|i| ShardCids::new(1, i, shards)).collect();
        for round in 0..4 {
            // A new source address each round, as after a NAT rebinding.
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            for (shard, cids) in cids.iter_mut().enumerate() {
                let cid = cids.generate_cid();
                let mut short = vec![0x40];
                short.extend_from_slice(&cid);
                let mut long = vec![0xc0, 0, 0, 0, 1, cid.len() as u8];
                long.extend_from_slice(&cid);
                for packet in [short, long] {
                    client.send_to(&packet, port).unwrap();
                    let mut buf = [0u8; 64];
                    let (n, _) = sockets[shard].tunnel.recv_from(&mut buf).unwrap();
                    assert_eq!(&buf[..n], &packet[..], "round {round}, shard {shard}");
                }
            }
        }
    }

    #[test]
    fn a_port_in_use_is_refused_with_more_than_one_shard() {
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = bind(
            Addresses {
                http: None,
                https: None,
                tunnel: other.local_addr().unwrap(),
            },
            2,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("is another edge running?"), "{err:#}");
    }
}
