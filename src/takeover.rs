//! The takeover socket (`--takeover PATH`): a relay started while another one listens at PATH
//! asks it to hand over; the running one stops receiving, passes its bound sockets
//! (`SCM_RIGHTS`, so that the datagrams queued in the kernel survive) and its state image, and
//! exits once the new one is ready, or serves on if the new one refuses or fails.
//!
//! The exchange, on a stream socket that only the relay's own user may use:
//!
//! 1. new → old: `HELLO`, the state format and the new relay's version;
//! 2. old → new: `N` and why it refuses, or `O` with the sockets attached, then the image;
//! 3. new → old: `R` once it has restored the image and is ready to serve, or `N` and why not;
//! 4. old → new: `G`, after which the old relay never serves again; only then does the new
//!    one start its workers, so that the two never serve the same sockets at once.
//!
//! This module knows the exchange only; what is paused, exported and resumed is the caller's.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tracing::{error, info, warn};

use crate::state::FORMAT;

const HELLO: &[u8; 8] = b"UDPRLYTK";
/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;
/// How long the old relay waits for a request to be spoken, and the new one for the answer
/// `G` once it said it is ready.
const SHORT: Duration = Duration::from_secs(5);
/// How long either waits for the other's heavy step, exporting or restoring the state (about
/// a second each for a million peers); the old relay forwards nothing meanwhile, so a new one
/// that never answers must not hold it long.
const LONG: Duration = Duration::from_secs(30);
/// The longest refusal or version read.
const MAX_TEXT: usize = 4096;
/// The largest image accepted (a million peers take about 60 MB).
const MAX_IMAGE: u64 = 16 << 30;

/// What a running relay hands over.
pub struct Handover {
    /// Its UDP sockets, in worker order (`SO_REUSEPORT` steers a source by its index).
    pub sockets: Vec<OwnedFd>,
    /// Its metrics listener, if it has one.
    pub metrics: Option<OwnedFd>,
    /// Its state image.
    pub image: Vec<u8>,
}

/// The running relay, as the takeover socket acts on it.
pub trait Handing: Send + 'static {
    /// Stops receiving and sending, hands `exchange` what to hand over, and serves again unless
    /// it says the new relay took over: then this one must never serve again. Nothing else may
    /// stop or change the relay meanwhile.
    fn hand_over(&mut self, exchange: &mut dyn FnMut(Handover) -> bool);
}

/// The takeover socket a running relay listens on.
pub struct Listener {
    socket: UnixListener,
    path: PathBuf,
}

/// What asking at PATH found.
pub enum Asked {
    /// No relay listens there.
    Nobody,
    /// A relay offers its sockets and state.
    Offer(Offer),
}

/// A running relay's offer: what it hands over, and the connection to answer it on.
pub struct Offer {
    /// Its UDP sockets, in worker order.
    pub sockets: Vec<OwnedFd>,
    /// Its metrics listener, if it had one.
    pub metrics: Option<OwnedFd>,
    /// The takeover socket, for the new relay to listen on in its turn.
    pub listener: Listener,
    /// Its state image.
    pub image: Vec<u8>,
    /// Its version, for the log.
    pub version: String,
    conn: UnixStream,
}

impl Offer {
    /// Refuses the offer: the old relay serves on.
    pub fn refuse(mut self, why: &str) {
        let _ = write_text(&mut self.conn, b'N', why);
    }

    /// Says the new relay is ready; once the old one answers that it has stopped for good, the
    /// new one may serve.
    pub fn accept(mut self) -> io::Result<Listener> {
        self.conn.write_all(b"R")?;
        self.conn.set_read_timeout(Some(SHORT))?;
        let mut go = [0u8; 1];
        match self.conn.read_exact(&mut go) {
            Ok(()) if go[0] == b'G' => Ok(self.listener),
            Ok(()) => Err(io::Error::other("the running relay answered out of turn")),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("the running relay did not confirm the handover ({e}): it serves on"),
            )),
        }
    }
}

/// Asks the relay listening at `path` to hand over. `Nobody` if none listens there (a stale
/// socket left by a relay that died is removed); an error if one answers but refuses, or the
/// exchange fails.
pub fn ask(path: &Path) -> io::Result<Asked> {
    let mut conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Asked::Nobody),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            remove_stale(path)?;
            return Ok(Asked::Nobody);
        }
        Err(e) => return Err(named(path, e)),
    };
    // Whoever listens there gets the sockets' traffic and hands over the keys that sessions
    // derive from: only a relay of this user (or root) may, as only they may ask one.
    same_user(
        &conn,
        "the socket there is its: its offer is refused (put the socket in a \
         directory only the relay's user may write)",
    )
    .map_err(|e| named(path, e))?;
    let mut hello = HELLO.to_vec();
    hello.extend_from_slice(&FORMAT.to_le_bytes());
    push_text(&mut hello, env!("CARGO_PKG_VERSION"));
    conn.write_all(&hello)?;
    conn.set_read_timeout(Some(LONG))?;

    let mut head = [0u8; 1 + 4 + 1 + 8];
    let mut fds = Vec::new();
    let first = recv_with_fds(&conn, &mut head, &mut fds)?;
    if first == 0 {
        return Err(io::Error::other(
            "the running relay closed the takeover connection without an answer",
        ));
    }
    if head[0] == b'N' {
        let mut text = head[1..first].to_vec();
        let why = read_text_after(&mut conn, &mut text)?;
        return Err(io::Error::other(format!(
            "the running relay refuses to hand over: {why}"
        )));
    }
    conn.read_exact(&mut head[first..])?;
    if head[0] != b'O' {
        return Err(io::Error::other(
            "the running relay answered out of turn (not a relay of this kind?)",
        ));
    }
    let sockets = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    let has_metrics = head[5] == 1;
    let image_len = u64::from_le_bytes(head[6..14].try_into().expect("8 bytes"));
    let want = 1 + usize::from(has_metrics) + sockets;
    if fds.len() != want || sockets == 0 || image_len > MAX_IMAGE {
        return Err(io::Error::other(format!(
            "the running relay's offer is malformed: {} descriptors for {sockets} sockets",
            fds.len()
        )));
    }
    let version = read_text(&mut conn)?;
    let mut image = Vec::new();
    (&mut conn).take(image_len).read_to_end(&mut image)?;
    if image.len() as u64 != image_len {
        return Err(io::Error::other(format!(
            "the running relay's state ended after {} of {image_len} bytes",
            image.len()
        )));
    }
    let mut fds = fds.into_iter();
    let listener = UnixListener::from(fds.next().expect("counted"));
    let metrics = if has_metrics { fds.next() } else { None };
    Ok(Asked::Offer(Offer {
        sockets: fds.collect(),
        metrics,
        listener: Listener {
            socket: listener,
            path: path.to_path_buf(),
        },
        image,
        version,
        conn,
    }))
}

/// Listens at `path`, where no relay answers (see [`ask`]), for the relay's own user only.
pub fn listen(path: &Path) -> io::Result<Listener> {
    let socket = UnixListener::bind(path).map_err(|e| named(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| named(path, e))?;
    Ok(Listener {
        socket,
        path: path.to_path_buf(),
    })
}

impl Listener {
    /// Answers takeover requests on a thread of its own, for as long as the relay serves.
    pub fn serve(self, relay: impl Handing) -> io::Result<()> {
        let Listener { socket, path } = self;
        info!(path = %path.display(), "takeover socket listening");
        thread::Builder::new()
            .name("takeover".into())
            .spawn(move || {
                let mut relay = relay;
                for conn in socket.incoming() {
                    let conn = match conn {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "takeover socket: accept");
                            thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    match serve_one(conn, &socket, &mut relay) {
                        Ok(true) => return,
                        Ok(false) => {}
                        Err(e) => warn!("takeover request: {e}"),
                    }
                }
            })?;
        Ok(())
    }
}

/// Serves one request; whether the relay handed over (and must never serve again).
fn serve_one(
    mut conn: UnixStream,
    listener: &UnixListener,
    relay: &mut impl Handing,
) -> io::Result<bool> {
    let peer = same_user(
        &conn,
        "refused its request: only the relay's own user may take over",
    )?;
    // The whole request within SHORT, however its bytes trickle in: else a client could hold
    // this socket, and every takeover after it, for as long as it sends a byte now and then.
    let by = Instant::now() + SHORT;
    let mut hello = [0u8; 12];
    read_by(&mut conn, &mut hello, by)?;
    if &hello[..8] != HELLO {
        return Err(io::Error::other("not a takeover request"));
    }
    let format = u32::from_le_bytes(hello[8..].try_into().expect("4 bytes"));
    let mut len = [0u8; 2];
    read_by(&mut conn, &mut len, by)?;
    let len = text_len(len)?;
    let mut version = vec![0; len];
    read_by(&mut conn, &mut version, by)?;
    let version = String::from_utf8_lossy(&version).into_owned();
    if format != FORMAT {
        let why = format!(
            "version mismatch: the new relay ({version}) speaks state format {format}, this one \
             ({}) format {FORMAT}",
            env!("CARGO_PKG_VERSION")
        );
        let _ = write_text(&mut conn, b'N', &why);
        return Err(io::Error::other(why));
    }
    info!(new_version = %version, pid = peer.pid.as_raw_nonzero(), "handing over to a new relay");
    let mut done = false;
    relay.hand_over(&mut |handover| {
        done = match exchange(&mut conn, listener, &handover) {
            Ok(()) => true,
            Err(e) => {
                error!("the handover failed, serving on: {e}");
                false
            }
        };
        done
    });
    Ok(done)
}

/// The credentials of the process at the other end of `conn`, if it runs as this relay's user
/// (or root); else an error naming it, then `why`.
fn same_user(conn: &UnixStream, why: &str) -> io::Result<rustix::net::UCred> {
    let peer = rustix::net::sockopt::socket_peercred(conn)?;
    if peer.uid != rustix::process::geteuid() && !peer.uid.is_root() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "uid {} (pid {}) is not this relay's user; {why}",
                peer.uid.as_raw(),
                peer.pid.as_raw_nonzero()
            ),
        ));
    }
    Ok(peer)
}

/// Fills `buf` from `conn` before `deadline`, or fails.
fn read_by(conn: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the takeover request was not spoken in time",
            ));
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Offers `h` and waits for the new relay to be ready; then tells it to serve. An error if it
/// refuses, fails or does not answer in time.
fn exchange(conn: &mut UnixStream, listener: &UnixListener, h: &Handover) -> io::Result<()> {
    offer(conn, listener, h)?;
    conn.set_read_timeout(Some(LONG))?;
    let mut a = [0u8; 1];
    conn.read_exact(&mut a)?;
    if a[0] != b'R' {
        let why = read_text(conn).unwrap_or_else(|e| e.to_string());
        return Err(io::Error::other(format!("the new relay refused: {why}")));
    }
    // From here on this relay never serves again, whether or not `G` arrives.
    let _ = conn.write_all(b"G");
    Ok(())
}

/// Sends the offer: its head with every descriptor attached, the version, the image.
fn offer(conn: &mut UnixStream, listener: &UnixListener, h: &Handover) -> io::Result<()> {
    let mut fds = vec![listener.as_fd()];
    fds.extend(h.metrics.as_ref().map(|m| m.as_fd()));
    fds.extend(h.sockets.iter().map(|s| s.as_fd()));
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(
            "too many sockets to hand over in one message",
        ));
    }
    let mut head = vec![b'O'];
    head.extend_from_slice(&(h.sockets.len() as u32).to_le_bytes());
    head.push(u8::from(h.metrics.is_some()));
    head.extend_from_slice(&(h.image.len() as u64).to_le_bytes());
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("the descriptors do not fit one message"));
    }
    // Again if a signal interrupts it (std's own reads and writes do the same).
    let n = loop {
        match rustix::net::sendmsg(
            &*conn,
            &[IoSlice::new(&head)],
            &mut cmsg,
            SendFlags::empty(),
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    conn.write_all(&head[n..])?;
    let mut rest = Vec::new();
    push_text(&mut rest, env!("CARGO_PKG_VERSION"));
    conn.write_all(&rest)?;
    conn.write_all(&h.image)
}

/// Receives into `buf` (some of it) and any descriptors sent with it.
fn recv_with_fds(conn: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let r = loop {
        match rustix::net::recvmsg(
            conn,
            &mut [IoSliceMut::new(buf)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if r.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::other("descriptors were cut off in transit"));
    }
    Ok(r.bytes)
}

fn push_text(buf: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(MAX_TEXT)];
    buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
    buf.extend_from_slice(s);
}

fn write_text(conn: &mut UnixStream, kind: u8, s: &str) -> io::Result<()> {
    let mut buf = vec![kind];
    push_text(&mut buf, s);
    conn.write_all(&buf)
}

fn read_text(conn: &mut UnixStream) -> io::Result<String> {
    read_text_after(conn, &mut Vec::new())
}

/// The length a text's first two bytes give, within [`MAX_TEXT`].
fn text_len(b: [u8; 2]) -> io::Result<usize> {
    let len = usize::from(u16::from_le_bytes(b));
    if len > MAX_TEXT {
        return Err(io::Error::other(
            "an overlong text in the takeover exchange",
        ));
    }
    Ok(len)
}

/// A text whose first bytes (maybe part of its length) are in `got` already.
fn read_text_after(conn: &mut UnixStream, got: &mut Vec<u8>) -> io::Result<String> {
    while got.len() < 2 {
        let mut b = [0u8; 1];
        conn.read_exact(&mut b)?;
        got.push(b[0]);
    }
    let len = text_len([got[0], got[1]])?;
    let mut text = got[2..].to_vec();
    if text.len() < len {
        let mut rest = vec![0; len - text.len()];
        conn.read_exact(&mut rest)?;
        text.extend(rest);
    }
    text.truncate(len);
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Removes the socket a relay that died left at `path`; anything else there is not ours.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| named(path, e))?;
    if !meta.file_type().is_socket() {
        return Err(named(
            path,
            io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
        ));
    }
    std::fs::remove_file(path).map_err(|e| named(path, e))
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("--takeover {}: {e}", path.display()))
}
