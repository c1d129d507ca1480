mod common;
use common::*;

#[test]
fn register_and_stop() {
    let mut r = Relay::start(&[]);
    let a = Peer::new(&r);
    let (ack, list) = a.register("Alice");
    assert_eq!(ack["peer_name"], "Alice");
    assert_eq!(list["count"], 1);
    a.expect_nothing();
    assert_eq!(r.metric("udp_relay_peers_registered"), 1);
    let (status, took) = r.stop();
    assert!(status.success());
    assert!(took.as_millis() < 1000);
}
