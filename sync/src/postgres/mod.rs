//! PostgreSQL: the first engine behind `switchyard sync`. `preflight`,
//! `clone` (an exported snapshot, parallel binary `COPY` streams, `pg_dump`
//! and `pg_restore` for the schema), `migrate`, `verify` (in-database
//! checksums, bisected on the primary key), `replicate` (a publication and
//! slot on blue, green subscribed from the clone's snapshot), `cutover`
//! (with reverse replication), `prepare` (the rollout's workflow), and the
//! records in green's `switchyard` schema (`state`), and whether blue took
//! writes since a snapshot-mode clone (`blue_changes`). `pg` holds the
//! sessions, `tls` libpq-style TLS, `roles` owners and grants, `compat` the
//! replication-safety check of migrations, `catalog` the schema objects.

pub mod blue_changes;
pub mod catalog;
pub mod clone;
pub mod compat;
pub mod controller_lock;
pub mod cutover;
pub mod ephemeral;
pub mod fence;
pub mod migrate;
pub mod pg;
pub(crate) mod post_data;
pub mod preflight;
pub mod prepare;
pub mod replicate;
pub mod reuse;
pub mod roles;
pub mod state;
pub mod tls;
pub mod verify;
pub(crate) mod workers;
