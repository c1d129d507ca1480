//! Several relays acting as one (issue 20, begun): the directory of names in Redis
//! ([`directory`]). The mesh datagrams' bytes are `relay_wire::mesh`, their trust
//! `relay_core::mesh`.

pub mod directory;
