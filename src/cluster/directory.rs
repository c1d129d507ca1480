//! The cluster's directory in Redis: which relay (node) each name is homed at, and which nodes
//! are alive. A name is claimed with one atomic script: a name homed at a live node is in use at
//! every other, unless the claimant shows the key the name was signed with (a signature every
//! relay checks; a peer whose relay died re-homes anywhere, its old home's names being free). Each
//! claim gives the name a new epoch, and a release names the epoch it releases, so that a
//! relay that lost a name cannot remove it from its new home. A node's liveness is one key
//! with a short TTL that the node renews, standing for all its names: keepalives never reach
//! Redis.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubStream};
use redis::{AsyncCommands, RedisResult, Script};

/// The prefix of every key and channel the relays use.
const PREFIX: &str = "udp-relay:";
/// How long a Redis call may take before it fails (a Redis that stopped answering fails calls
/// instead of holding them).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub use relay_core::wire::mesh::valid_node;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The name is homed here now, at this epoch.
    Home(u64),
    /// The name is homed at this other live node.
    InUse(String),
}

/// Claims `KEYS[1]` (a name) for node `ARGV[1]`; `ARGV[2]` the public key the registration was
/// signed with (empty for none), kept with the claim, which moves a name from a live node only
/// when the same key is shown again; `ARGV[3]` the prefix of node keys; `ARGV[4]` the events
/// channel; `KEYS[2]` the counter epochs come from (one for every name, so that no epoch is ever
/// issued twice, even to a name released and claimed again); `ARGV[5]` the host whose
/// registration asked (`-` for none), published with the join so that the other relays charge
/// its announcements to it. A record is `node epoch` or `node epoch key`. Returns `{1, epoch}`
/// or `{0, owner}`.
const CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, e, key = string.match(cur, '^(%S+) (%d+) ?(%S*)$')
  if owner == ARGV[1] then
    -- This node's already: the same claim (a newly signed registration keeps its key).
    if ARGV[2] ~= '' and key ~= ARGV[2] then
      redis.call('SET', KEYS[1], owner .. ' ' .. e .. ' ' .. ARGV[2])
    end
    return {1, e}
  end
  local proved = ARGV[2] ~= '' and key == ARGV[2]
  if owner and not proved and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    return {0, owner}
  end
end
-- A counter lost with a Redis without persistence starts again from the time in microseconds,
-- beyond every epoch issued before.
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
local epoch = string.format('%d', redis.call('INCR', KEYS[2]))
local record = ARGV[1] .. ' ' .. epoch
if ARGV[2] ~= '' then
  record = record .. ' ' .. ARGV[2]
end
redis.call('SET', KEYS[1], record)
redis.call('PUBLISH', ARGV[4], 'join ' .. KEYS[1] .. ' ' .. ARGV[1] .. ' ' .. epoch .. ' ' .. ARGV[5])
return {1, epoch}
"#;

/// Releases `KEYS[1]` if node `ARGV[1]` holds it at epoch `ARGV[2]` (at any epoch, if `ARGV[2]`
/// is `0`, which no claim has); `ARGV[3]` the events channel. Returns 1 if it did.
const RELEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  return 0
end
local owner, e = string.match(cur, '^(%S+) (%d+)')
if owner == ARGV[1] and (e == ARGV[2] or ARGV[2] == '0') then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], 'leave ' .. KEYS[1] .. ' ' .. owner .. ' ' .. e)
  return 1
end
return 0
"#;

/// Says node `ARGV[1]` is alive, its record (`mesh load`) `ARGV[2]`, for `ARGV[3]` ms: its key `KEYS[1]`, and
/// its place in the set of nodes `KEYS[2]` (scored by when it lapses, on Redis's clock, so that
/// a node that died leaves the set). `ARGV[4]` is the prefix of node keys. Returns the live
/// nodes and their mesh addresses, alternately.
const HEARTBEAT: &str = r#"
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local live = {}
for _, n in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local m = redis.call('GET', ARGV[4] .. n)
  if m then
    table.insert(live, n)
    table.insert(live, m)
  end
end
return live
"#;

/// Where a name is homed, as the directory holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Homed {
    /// The name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its claim's epoch.
    pub epoch: u64,
}

/// A node's record, `mesh load`: its mesh address.
fn node_mesh(record: &str) -> Option<SocketAddr> {
    record.split(' ').next()?.parse().ok()
}

/// A name's record, `node epoch` or `node epoch key`: its node and epoch.
fn record(value: &str) -> Option<(String, u64)> {
    let mut words = value.split(' ');
    let node = words.next()?;
    let epoch = words.next()?.parse().ok()?;
    valid_node(node).then(|| (node.to_string(), epoch))
}

/// A change of the directory, as every node hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `name` is homed at `node` now, at `epoch`.
    Joined {
        /// The name.
        name: String,
        /// Its home.
        node: String,
        /// The claim's epoch.
        epoch: u64,
        /// The host whose registration caused it, if one did (not a republish).
        by: Option<IpAddr>,
    },
    /// `name` left `node`, where it was homed at `epoch`.
    Left {
        /// The name.
        name: String,
        /// Its home until now.
        node: String,
        /// The released claim's epoch.
        epoch: u64,
    },
}

impl Event {
    /// The event a script published, if it is one.
    fn parse(text: &str) -> Option<Event> {
        // A name may hold spaces, a node id none: the node and the epoch (and a join's host)
        // are the last words.
        let (what, mut rest) = text.split_once(' ')?;
        let mut by = None;
        if what == "join" {
            let (front, host) = rest.rsplit_once(' ')?;
            by = match host {
                "-" => None,
                h => Some(h.parse().ok()?),
            };
            rest = front;
        }
        let (rest, epoch) = rest.rsplit_once(' ')?;
        let (key, node) = rest.rsplit_once(' ')?;
        let name = key.strip_prefix(PREFIX)?.strip_prefix("name:")?.to_string();
        if !valid_node(node) {
            return None;
        }
        let (node, epoch) = (node.to_string(), epoch.parse().ok()?);
        match what {
            "join" => Some(Event::Joined {
                name,
                node,
                epoch,
                by,
            }),
            "leave" => Some(Event::Left { name, node, epoch }),
            _ => None,
        }
    }
}

/// The directory's changes, as they are published.
pub struct Events {
    stream: PubSubStream,
}

impl Events {
    /// Listens to the directory at `url` from now on.
    pub async fn subscribe(url: &str) -> RedisResult<Events> {
        let client = redis::Client::open(url)?;
        let mut pubsub = Directory::bounded(client.get_async_pubsub()).await?;
        Directory::bounded(pubsub.subscribe(Directory::events())).await?;
        Ok(Events {
            stream: pubsub.into_on_message(),
        })
    }

    /// The next change; `None` once the connection is gone (the caller subscribes again and
    /// reads what it missed from the directory).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            let msg = self.stream.next().await?;
            // One message that is not an event is skipped, not the end of the stream.
            if let Some(e) = msg
                .get_payload::<String>()
                .ok()
                .and_then(|t| Event::parse(&t))
            {
                return Some(e);
            }
        }
    }
}

/// One node's link to the directory. Redis commands go through a connection that reconnects
/// by itself; every call fails (and is counted by its caller) while Redis is away.
#[derive(Clone)]
pub struct Directory {
    con: ConnectionManager,
    node: String,
    ttl: Duration,
    claim: Script,
    release: Script,
    heartbeat: Script,
}

impl Directory {
    /// The directory at `url` (`redis://HOST:PORT`) for node `node` (see [`valid_node`]),
    /// whose liveness lapses `ttl` after its last [`Directory::heartbeat`]. A node claims and
    /// releases each name in turn (its registry decides), so that its own late release never
    /// meets its own later claim.
    pub async fn connect(url: &str, node: &str, ttl: Duration) -> RedisResult<Directory> {
        if !valid_node(node) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a node id is 1 to 64 of A-Z a-z 0-9 . _ -",
            )));
        }
        let client = redis::Client::open(url)?;
        // One quick retry: a call made while Redis is away fails within CALL_TIMEOUT (and is
        // refused or retried by its caller) instead of waiting out a long backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(200);
        Ok(Directory {
            con: ConnectionManager::new_with_config(client, config).await?,
            node: node.to_string(),
            ttl,
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            heartbeat: Script::new(HEARTBEAT),
        })
    }

    /// `call`, failed if it takes longer than [`CALL_TIMEOUT`] (with its reconnection).
    async fn bounded<T>(call: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "the directory did not answer in time",
                )))
            })
    }

    fn name_key(name: &str) -> String {
        format!("{PREFIX}name:{name}")
    }

    fn node_key(node: &str) -> String {
        format!("{PREFIX}node:{node}")
    }

    fn events() -> String {
        format!("{PREFIX}events")
    }

    /// Says this node is alive, reached at `mesh` and serving `load` peers, for another TTL: the
    /// live nodes (this one too) and their mesh addresses (a record that does not read is left
    /// out). A node's record is `mesh load`, for an operator (or a balancer) to read.
    pub async fn heartbeat(
        &mut self,
        mesh: SocketAddr,
        load: usize,
    ) -> RedisResult<Vec<(String, SocketAddr)>> {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let live: Vec<String> = Self::bounded(
            self.heartbeat
                .key(Self::node_key(&self.node))
                .key(format!("{PREFIX}nodes"))
                .arg(&self.node)
                .arg(format!("{mesh} {load}"))
                .arg(ttl.max(1))
                .arg(format!("{PREFIX}node:"))
                .invoke_async(&mut self.con),
        )
        .await?;
        Ok(live
            .chunks_exact(2)
            .filter(|p| valid_node(&p[0]))
            .filter_map(|p| Some((p[0].clone(), node_mesh(&p[1])?)))
            .collect())
    }

    /// Up to about `count` names of the directory from `cursor` on (a `SCAN`; 0 starts), with
    /// the cursor to go on from (0 at the end).
    pub async fn names(&mut self, cursor: u64, count: usize) -> RedisResult<(u64, Vec<Homed>)> {
        let (next, keys): (u64, Vec<String>) = Self::bounded(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}name:*"))
                .arg("COUNT")
                .arg(count)
                .query_async(&mut self.con),
        )
        .await?;
        if keys.is_empty() {
            return Ok((next, Vec::new()));
        }
        let values: Vec<Option<String>> =
            Self::bounded(redis::cmd("MGET").arg(&keys).query_async(&mut self.con)).await?;
        let prefix = format!("{PREFIX}name:");
        let homed = keys
            .iter()
            .zip(values)
            .filter_map(|(k, v)| {
                let (node, epoch) = record(&v?)?;
                let name = k.strip_prefix(&prefix)?.to_string();
                Some(Homed { name, node, epoch })
            })
            .collect();
        Ok((next, homed))
    }

    /// Claims `name` for this node; `key` the public key its registration was signed with (a
    /// name signed with it moves here from a live node); `by` the host whose registration asks
    /// (published with the join).
    pub async fn claim(
        &mut self,
        name: &str,
        key: Option<&str>,
        by: Option<IpAddr>,
    ) -> RedisResult<Claimed> {
        let by = by.map_or_else(|| "-".to_string(), |ip| ip.to_string());
        // A key is base64, without spaces; anything else is no key (the record stays readable).
        let key = key.filter(|k| !k.is_empty() && !k.contains(char::is_whitespace));
        let (won, what): (u8, String) = Self::bounded(
            self.claim
                .key(Self::name_key(name))
                .key(format!("{PREFIX}epoch"))
                .arg(&self.node)
                .arg(key.unwrap_or(""))
                .arg(format!("{PREFIX}node:"))
                .arg(Self::events())
                .arg(by)
                .invoke_async(&mut self.con),
        )
        .await?;
        Ok(if won == 1 {
            let epoch = what.parse().map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::TypeError, "an epoch not a number"))
            })?;
            Claimed::Home(epoch)
        } else {
            Claimed::InUse(what)
        })
    }

    /// Releases `name` if this node holds it at `epoch` (at any, with
    /// `relay_core::cluster::ANY_EPOCH`); whether it did.
    pub async fn release(&mut self, name: &str, epoch: u64) -> RedisResult<bool> {
        let done: u8 = Self::bounded(
            self.release
                .key(Self::name_key(name))
                .arg(&self.node)
                .arg(epoch)
                .arg(Self::events())
                .invoke_async(&mut self.con),
        )
        .await?;
        Ok(done == 1)
    }

    /// Where `name` is homed (its node and the claim's epoch) and that node's mesh address, if
    /// the node is alive.
    pub async fn home(&mut self, name: &str) -> RedisResult<Option<(Homed, SocketAddr)>> {
        let cur: Option<String> = Self::bounded(self.con.get(Self::name_key(name))).await?;
        let Some((node, epoch)) = cur.as_deref().and_then(record) else {
            return Ok(None);
        };
        let mesh: Option<String> = Self::bounded(self.con.get(Self::node_key(&node))).await?;
        let Some(mesh) = mesh.as_deref().and_then(node_mesh) else {
            return Ok(None);
        };
        let name = name.to_string();
        Ok(Some((Homed { name, node, epoch }, mesh)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_the_scripts_publish_them_and_nothing_else() {
        assert_eq!(
            Event::parse("join udp-relay:name:alice relay-a 7 -"),
            Some(Event::Joined {
                name: "alice".into(),
                node: "relay-a".into(),
                epoch: 7,
                by: None,
            })
        );
        assert_eq!(
            Event::parse("leave udp-relay:name:bob relay-b 9"),
            Some(Event::Left {
                name: "bob".into(),
                node: "relay-b".into(),
                epoch: 9
            })
        );
        // A name with spaces reads whole.
        assert_eq!(
            Event::parse("join udp-relay:name:alice smith relay-a 7 2001:db8::1"),
            Some(Event::Joined {
                name: "alice smith".into(),
                node: "relay-a".into(),
                epoch: 7,
                by: Some("2001:db8::1".parse().unwrap()),
            })
        );
        for junk in [
            "",
            "join",
            "join alice relay-a 7",
            "join udp-relay:name:alice relay-a 7",
            "join udp-relay:name:alice relay-a x -",
            "join udp-relay:name:alice relay-a 7 not-an-ip",
            "leave udp-relay:name:alice relay-a 7 more",
            "moved udp-relay:name:alice relay-a 7",
            "join udp-relay:name:alice relay:a 7 -",
        ] {
            assert_eq!(Event::parse(junk), None, "{junk:?}");
        }
    }
}
