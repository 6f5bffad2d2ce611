//! # coordmesh
//!
//! An embeddable coordination mesh: peers find each other by gossip and
//! elect a leader with a lease, and (as the project grows) take fenced
//! locks through it and keep idempotency records, with no external server.
//!
//! ## Embedding a node
//!
//! A daemon starts a [`Mesh`] on its own tokio runtime and keeps the handle:
//!
//! ```no_run
//! use coordmesh::{Config, ConfigBuilder, Mesh, NodeId};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConfigBuilder {
//!     id: Some(NodeId(2)),
//!     gossip: Some("127.0.0.1:7410".parse()?),
//!     seed: Some(vec!["127.0.0.1:7400".into()]),
//!     voters: Some(vec![NodeId(1), NodeId(2), NodeId(3)]),
//!     ..ConfigBuilder::default()
//! }
//! .build()?;
//! let mesh = Mesh::start(config).await?;
//! for member in mesh.members() {
//!     println!("{} is {:?}", member.id, member.state);
//! }
//! mesh.shutdown().await; // leave gracefully
//! # Ok(()) }
//! ```
//!
//! Changes arrive as a stream:
//!
//! ```
//! # use coordmesh::{Config, Mesh, MemberEvent};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = Mesh::start(Config::new(1, "127.0.0.1:0".parse()?)?).await?;
//! let mut views = mesh.watch_members();
//! // The node sees itself once its first gossip round has run.
//! views.wait_for(|view| view.alive().count() == 1).await?;
//! assert_eq!(mesh.members()[0].id, mesh.id());
//! mesh.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! One node elects itself; in a cluster the lowest live id that reaches a
//! majority of voters leads. Act as leader only while [`Mesh::is_leader`]
//! says so (it checks the lease when called):
//!
//! ```
//! # use coordmesh::{Config, Mesh};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = Mesh::start(Config::new(1, "127.0.0.1:0".parse()?)?).await?;
//! let mut leader = mesh.watch_leader();
//! let now = leader.wait_for(|l| l.is_some()).await?.expect("a leader");
//! assert_eq!(now.id, mesh.id());
//! assert!(mesh.is_leader());
//! mesh.shutdown().await; // hands over (to nobody here), then leaves
//! # Ok(()) }
//! ```
//!
//! ## Layers
//!
//! - [`config`]: one validated [`Config`].
//! - [`membership`]: chitchat gossip turned into a [`MembershipView`],
//!   sealed with the [`secret`] when the cluster has one.
//! - [`rpc`]: QUIC with mutual TLS between peers (or datagrams on a
//!   simulated network).
//! - [`election`]: the sans-io election; [`node`] drives it;
//!   [`storage`] keeps promises durable.
//! - [`net`]: datagram sockets, real or simulated ([`net::SimNet`]).
//! - [`sim`]: whole clusters in one process under virtual time.
//! - [`http`]: the agent's HTTP API (`/v1/status`, `/metrics`).

#![deny(missing_docs, unreachable_pub)]

pub mod client;
pub mod clock;
pub mod config;
pub mod election;
#[cfg(feature = "harness")]
pub mod harness;
#[cfg(feature = "http")]
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod locks;
pub mod membership;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod node;
pub mod replication;
pub mod rpc;
pub mod secret;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;

pub use config::{Config, ConfigBuilder, ConfigError};
pub use ids::{Epoch, NodeId, Token};
pub use membership::{Member, MemberEvent, MemberState, MembershipView};
pub use mesh::{Environment, Mesh, StartError};
pub use secret::ClusterSecret;

pub use membership::PROTOCOL_VERSION;
