//! A packet capture without tcpdump: an AF_PACKET socket in a namespace, read on a thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Past this many bytes of packets, a capture keeps no more.
const LIMIT: usize = 64 << 20;

/// How long a read waits before looking whether the capture was stopped.
const POLL: Duration = Duration::from_millis(20);

/// After a stop, how long packets still arriving are read, at most.
const DRAIN: Duration = Duration::from_millis(100);

/// Every packet crossing a namespace's interfaces, both ways, as raw IP (no link header), kept
/// in memory (the first 64 MiB of them) until stopped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Captures in namespace `ns`; from when this returns, nothing is missed.
    pub(crate) fn start(ns: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, opened) = mpsc::channel();
        let (ns, stopped) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            crate::enter(&ns);
            let fd = open();
            let _ = ready.send(());
            collect(&fd, &stopped)
        });
        if opened.recv().is_err() {
            // The thread failed before its socket was open: its panic says why.
            let panic = thread.join().expect_err("no socket, no capture");
            std::panic::resume_unwind(panic);
        }
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Ends the capture and returns its packets, in the order they crossed.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take().expect("running until stopped");
        thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A packet socket for every protocol on every interface of the thread's namespace.
fn open() -> OwnedFd {
    let all = i32::from((libc::ETH_P_ALL as u16).to_be());
    // SAFETY: socket takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, all) };
    assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: a descriptor just opened, which nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let poll = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    set(&fd, libc::SO_RCVTIMEO, &poll);
    // A measurement's bursts outrun the default buffer (about 200 KiB) while this thread
    // copies; as root, the limit of net.core.rmem_max does not apply.
    set(&fd, libc::SO_RCVBUFFORCE, &(16i32 << 20));
    fd
}

/// Sets socket option `name` of level SOL_SOCKET to `value`.
fn set<T>(fd: &OwnedFd, name: i32, value: &T) {
    // SAFETY: `value` is readable for size_of::<T>() bytes, the length passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt {name}: {}", io::Error::last_os_error());
}

/// Reads packets until `stop`, then those already queued (for [`DRAIN`] at most).
fn collect(fd: &OwnedFd, stop: &AtomicBool) -> Vec<Vec<u8>> {
    let (mut packets, mut kept) = (Vec::new(), 0);
    let mut buf = vec![0u8; 1 << 16];
    let mut drain_until = None;
    loop {
        if drain_until.is_none() && stop.load(Ordering::Acquire) {
            drain_until = Some(Instant::now() + DRAIN);
        }
        if drain_until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        // Once stopped, a packet sent before the stop may still be queued: it is read, without
        // waiting for more.
        let flags = if drain_until.is_some() {
            libc::MSG_DONTWAIT
        } else {
            0
        };
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if drain_until.is_some() => break,
                io::ErrorKind::WouldBlock => continue,
                _ => panic!("capture: {e}"),
            }
        }
        let n = n as usize;
        if kept + n <= LIMIT {
            kept += n;
            packets.push(buf[..n].to_vec());
        }
    }
    packets
}
