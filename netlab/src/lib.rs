//! A NAT lab in network namespaces: a relay on the "public" side and sites, each a NAT router
//! (nftables) in front of one or more peers on its LAN. Tests and measurements build one, start
//! processes and open sockets inside its namespaces, and capture what crosses the relay's side.
//! Root only, with `ip` (iproute2) and `nft` (nftables); [`can_run`] says whether they are here.
//!
//! ```text
//!  peer 192.168.1.2 ─┐                                       ┌─ 192.168.2.2 peer
//!  peer 192.168.1.3 ─┴ lan ─ nat ─ 10.200.1.2 ─┐   ┌─ 10.200.2.2 ─ nat ─ lan ┘
//!                                          10.200.1.1 relay 10.200.2.1
//! ```

mod capture;

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

pub use capture::Capture;

/// Whether `test` can build namespaces here; if not, says why (and under CI as root, fails).
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "nft"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none() || !root,
        "{test}: CI runs as root and installs iproute2 and nftables"
    );
    println!("SKIPPED {test}: needs root and `ip` and `nft` (iproute2, nftables)");
    false
}

/// Runs `args` (a program and its arguments), insists it worked, and returns its output.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`sh`] inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> String {
    sh(&[&["ip", "netns", "exec", ns], args].concat())
}

/// How a site's router maps its peers' datagrams onto its public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// One port per peer socket, its own port where free, for every destination (`masquerade`);
    /// only the destinations it sent to may answer (conntrack's address-and-port filtering).
    Cone,
    /// A random port for every destination (`masquerade fully-random`).
    Symmetric,
}

/// One site of a lab: a NAT router in front of its peers.
#[derive(Clone, Copy, Debug)]
pub struct Site {
    nat: Nat,
    peers: u8,
    hairpin: bool,
}

impl Site {
    /// `peers` peers behind a NAT of kind `nat`, which does not hairpin.
    pub fn new(nat: Nat, peers: u8) -> Site {
        assert!((1..=253).contains(&peers), "a site has 1 to 253 peers");
        Site {
            nat,
            peers,
            hairpin: false,
        }
    }

    /// Whether a datagram from a peer to its own NAT's public address and a mapping's port is
    /// turned back to the LAN peer that mapping belongs to (on), or dropped (off).
    pub fn hairpin(self, on: bool) -> Site {
        Site {
            hairpin: on,
            ..self
        }
    }
}

/// The relay's address on site `site`'s public link (sites count from 1).
pub fn relay_ip(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, site, 1)
}

/// The public address of site `site`'s NAT.
pub fn public_ip(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, site, 2)
}

/// The LAN address of peer `peer` (from 1) of site `site`.
pub fn peer_ip(site: u8, peer: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, site, peer + 1)
}

/// Labs built by this process so far: with the pid, what keeps namespace names apart.
static LABS: AtomicU32 = AtomicU32::new(0);

/// A topology of namespaces; dropping it kills the processes it started and deletes them.
pub struct Lab {
    relay: String,
    nats: Vec<String>,
    peers: Vec<Vec<String>>,
    /// pidfds rather than pids: a child its caller has already reaped cannot be mistaken for
    /// another process that was given its pid since.
    children: Mutex<Vec<OwnedFd>>,
}

impl Lab {
    /// Builds the relay's namespace and `sites`, site `n` (from 1) being `sites[n - 1]`; `tag`,
    /// a few characters, shows in the namespaces' names which test made them.
    pub fn new(tag: &str, sites: &[Site]) -> Lab {
        assert!(sites.len() <= 255, "at most 255 sites");
        let id = format!(
            "{tag}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        // Named in full before any exists, so that a failure half-way still deletes all.
        let lab = Lab {
            relay: format!("{id}r"),
            nats: (1..=sites.len()).map(|s| format!("{id}n{s}")).collect(),
            peers: (1..=sites.len())
                .zip(sites)
                .map(|(s, site)| (1..=site.peers).map(|p| format!("{id}p{s}-{p}")).collect())
                .collect(),
            children: Mutex::new(Vec::new()),
        };
        for n in lab.namespaces() {
            sh(&["ip", "netns", "add", n]);
            in_ns(n, &["ip", "link", "set", "lo", "up"]);
        }
        // The "internet" routes between the sites' public networks.
        in_ns(&lab.relay, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (i, site) in sites.iter().enumerate() {
            lab.build_site(i as u8 + 1, site);
        }
        lab
    }

    fn build_site(&self, s: u8, site: &Site) {
        let nat = &self.nats[usize::from(s) - 1];
        // Before its interfaces exist, so that they inherit it: a hairpinned datagram leaves by
        // the interface it came in by, for which the router would redirect its sender.
        in_ns(
            nat,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
            ],
        );
        let cidr = |ip: Ipv4Addr| format!("{ip}/24");
        veth(
            (&self.relay, &format!("s{s}"), &cidr(relay_ip(s))),
            (nat, "pub", &cidr(public_ip(s))),
        );
        in_ns(
            nat,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &relay_ip(s).to_string(),
            ],
        );
        // A bridge, so that several peers share one LAN behind the router.
        let gateway = Ipv4Addr::new(192, 168, s, 1);
        in_ns(nat, &["ip", "link", "add", "lan", "type", "bridge"]);
        in_ns(nat, &["ip", "addr", "add", &cidr(gateway), "dev", "lan"]);
        in_ns(nat, &["ip", "link", "set", "lan", "up"]);
        for (p, peer) in (1..).zip(&self.peers[usize::from(s) - 1]) {
            let port = format!("p{p}");
            sh(&[
                "ip", "link", "add", &port, "netns", nat, "type", "veth", "peer", "name", "eth0",
                "netns", peer,
            ]);
            in_ns(nat, &["ip", "link", "set", &port, "master", "lan", "up"]);
            in_ns(
                peer,
                &["ip", "addr", "add", &cidr(peer_ip(s, p)), "dev", "eth0"],
            );
            in_ns(peer, &["ip", "link", "set", "eth0", "up"]);
            in_ns(
                peer,
                &["ip", "route", "add", "default", "via", &gateway.to_string()],
            );
        }
        in_ns(nat, &["nft", &rules(public_ip(s), site)]);
    }

    fn namespaces(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.relay)
            .chain(&self.nats)
            .chain(self.peers.iter().flatten())
    }

    /// The relay's namespace, on every site's public link.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// The namespace of site `site`'s NAT router.
    pub fn nat(&self, site: u8) -> &str {
        &self.nats[usize::from(site) - 1]
    }

    /// The namespace of peer `peer` (from 1) of site `site`.
    pub fn peer(&self, site: u8, peer: u8) -> &str {
        &self.peers[usize::from(site) - 1][usize::from(peer) - 1]
    }

    /// Starts `cmd` (a program and its arguments) in namespace `ns` with `ip netns exec`, its
    /// standard input and output piped to the caller. Dropping the lab kills and reaps
    /// it: the `Child` is not to be used after that.
    pub fn spawn(&self, ns: &str, cmd: &[&str]) -> Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?} in {ns}: {e}"));
        // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1. The
        // child cannot have been reaped yet: only the `Child` we still hold could reap it.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor just opened, which nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        self.children.lock().unwrap().push(fd);
        child
    }

    /// Runs `f` on a thread inside namespace `ns` and returns what it returns: the sockets it
    /// opens (and servers it binds) stay in `ns`.
    pub fn run_in<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                enter(ns);
                f()
            });
            thread
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A UDP socket created inside namespace `ns`, bound to `local` (it stays there).
    pub fn socket_in(&self, ns: &str, local: &str) -> UdpSocket {
        self.run_in(ns, || {
            UdpSocket::bind(local).unwrap_or_else(|e| panic!("bind {local} in {ns}: {e}"))
        })
    }

    /// Starts capturing every packet crossing the relay namespace's interfaces.
    pub fn capture(&self) -> Capture {
        Capture::start(&self.relay)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for fd in self.children.get_mut().unwrap_or_else(|p| p.into_inner()) {
            // SAFETY: the descriptor is a pidfd we own; no siginfo is passed. A child that has
            // exited already makes it fail with ESRCH, which is what we wanted.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            // Reaped here, so that no caller needs to wait for it; one that did already makes
            // this fail with ECHILD.
            // SAFETY: `info` is a writable siginfo_t; the pidfd is ours.
            unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(
                    libc::P_PIDFD,
                    fd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                )
            };
        }
        for n in self.namespaces() {
            // Quietly: after a failed build, some of them never existed.
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Links `a`'s interface to `b`'s, each `(namespace, interface, address/prefix)`, and ups both.
fn veth(a: (&str, &str, &str), b: (&str, &str, &str)) {
    sh(&[
        "ip", "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
    ]);
    for (ns, dev, addr) in [a, b] {
        in_ns(ns, &["ip", "addr", "add", addr, "dev", dev]);
        in_ns(ns, &["ip", "link", "set", dev, "up"]);
    }
}

/// The nftables rules of a site's router, whose public address is `public`.
fn rules(public: Ipv4Addr, site: &Site) -> String {
    let masquerade = match site.nat {
        Nat::Cone => "masquerade",
        Nat::Symmetric => "masquerade fully-random",
    };
    // Linux keeps no table from public ports to LAN peers that a DNAT could read, so the
    // router writes its own: after masquerade has chosen a mapping's port (a chain after
    // srcnat), the port's LAN peer, from conntrack's original direction. A hairpinned datagram
    // is then sent on as if from the public address, by a mapping of its own, as a new
    // destination would get: the same port through a cone, a random one through a symmetric.
    // That rule tells hairpinned datagrams by their DNAT, not by `iifname`: postrouting has no
    // input interface, so `iifname` there matches nothing.
    let (hairpin, back) = if site.hairpin {
        let random = if site.nat == Nat::Symmetric {
            " fully-random"
        } else {
            ""
        };
        (
            format!(
                "map hairpin {{ type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 2m; }}
                chain pre {{ type nat hook prerouting priority dstnat; iifname \"lan\" ip daddr {public} dnat ip to udp dport map @hairpin; }}
                chain learn {{ type filter hook postrouting priority srcnat + 1; oifname \"pub\" update @hairpin {{ udp sport : ct original ip saddr . ct original proto-src }}; }}"
            ),
            format!("oifname \"lan\" ct status dnat snat ip to {public}{random};"),
        )
    } else {
        (String::new(), String::new())
    };
    // Unsolicited datagrams to the router itself are dropped before conntrack confirms them,
    // so that a punch arriving first leaves no entry in the way of the mapping. From the LAN,
    // those not hairpinned (all of them, with hairpinning off) are dropped too.
    format!(
        "table ip nat {{
            chain post {{ type nat hook postrouting priority srcnat; oifname \"pub\" {masquerade}; {back} }}
            {hairpin}
        }}
        table ip filter {{
            chain input {{ type filter hook input priority 0; iifname \"pub\" udp dport 1-65535 drop; iifname \"lan\" ip daddr {public} drop; }}
        }}"
    )
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    // SAFETY: setns on this thread only, with a namespace file we hold open.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}
