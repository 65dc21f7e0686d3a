//! Roles: which of blue's roles green needs, and how to create the missing
//! ones. Roles belong to the cluster, not the database, so a clone cannot
//! create them silently; with `[database] roles = "copy"` owners, grants
//! and default privileges are copied when every role they name exists on
//! green, and preflight and clone say which are missing, with the statement
//! that would create each. A policy naming a missing role breaks the clone
//! in either mode.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Side, SyncError};
use crate::pg;

/// A role some object on blue needs, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoleNeed {
    pub role: String,
    /// A policy names it (needed even with `roles = "skip"`).
    pub by_policy: bool,
    /// What needs it, e.g. `owns public.orders`, `is granted on public.orders`.
    pub why: Vec<String>,
    /// `CREATE ROLE …` with blue's attributes (no password).
    pub create: String,
}

/// Every role blue's user objects name: owners, grantees, default
/// privileges and policies (PUBLIC and built-in roles left out).
pub async fn needed(blue: &Client, side: Side) -> Result<Vec<RoleNeed>, SyncError> {
    let f = pg::SYSTEM_SCHEMA_FILTER;
    let sql = format!(
        "WITH uses(oid, what, policy) AS ( \
           SELECT c.relowner, 'owns ' || n.nspname || '.' || c.relname, false \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {f} \
           UNION ALL SELECT n.nspowner, 'owns schema ' || n.nspname, false FROM pg_namespace n WHERE {f} AND n.nspname <> 'public' \
           UNION ALL SELECT p.proowner, 'owns function ' || n.nspname || '.' || p.proname, false \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {f} \
           UNION ALL SELECT a.grantee, 'is granted on ' || n.nspname || '.' || c.relname, false \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a WHERE {f} \
           UNION ALL SELECT a.grantee, 'is granted on schema ' || n.nspname, false \
             FROM pg_namespace n, aclexplode(n.nspacl) a WHERE {f} \
           UNION ALL SELECT a.grantee, 'is granted on function ' || n.nspname || '.' || p.proname, false \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, aclexplode(p.proacl) a WHERE {f} \
           UNION ALL SELECT d.defaclrole, 'has default privileges', false FROM pg_default_acl d \
           UNION ALL SELECT a.grantee, 'is granted default privileges', false FROM pg_default_acl d, aclexplode(d.defaclacl) a \
           UNION ALL SELECT r, 'is named by policy ' || n.nspname || '.' || c.relname || '.' || p.polname, true \
             FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace, \
                  unnest(p.polroles) r WHERE {f}) \
         SELECT r.rolname::text, bool_or(u.policy), array_agg(DISTINCT u.what ORDER BY u.what), \
                'CREATE ROLE ' || quote_ident(r.rolname) \
                  || CASE WHEN r.rolcanlogin THEN ' LOGIN' ELSE ' NOLOGIN' END \
                  || CASE WHEN r.rolsuper THEN ' SUPERUSER' ELSE '' END \
                  || CASE WHEN r.rolcreatedb THEN ' CREATEDB' ELSE '' END \
                  || CASE WHEN r.rolcreaterole THEN ' CREATEROLE' ELSE '' END \
                  || CASE WHEN r.rolinherit THEN '' ELSE ' NOINHERIT' END \
                  || CASE WHEN r.rolreplication THEN ' REPLICATION' ELSE '' END \
                  || CASE WHEN r.rolbypassrls THEN ' BYPASSRLS' ELSE '' END || ';' \
           FROM uses u JOIN pg_roles r ON r.oid = u.oid \
          WHERE u.oid <> 0 AND r.rolname NOT LIKE 'pg\\_%' \
          GROUP BY r.rolname, r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolinherit, \
                   r.rolreplication, r.rolbypassrls \
          ORDER BY 1"
    );
    let rows = blue
        .query(&sql, &[])
        .await
        .map_err(|e| SyncError::query(side, "listing the roles objects need", &e))?;
    Ok(rows
        .iter()
        .map(|r| RoleNeed {
            role: r.get(0),
            by_policy: r.get(1),
            why: r.get(2),
            create: r.get(3),
        })
        .collect())
}

/// The needs whose role does not exist on the target of `dir`.
pub async fn missing_on_target(
    green: &Client,
    dir: crate::replication::Direction,
    needs: Vec<RoleNeed>,
) -> Result<Vec<RoleNeed>, SyncError> {
    let names: Vec<String> = needs.iter().map(|n| n.role.clone()).collect();
    let present: Vec<String> = green
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| SyncError::query(dir.target(), "listing roles", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(needs
        .into_iter()
        .filter(|n| !present.contains(&n.role))
        .collect())
}

/// One line per missing role: who needs it and how to create it.
pub fn describe(missing: &[RoleNeed]) -> String {
    missing
        .iter()
        .map(|m| {
            let mut why = m.why.clone();
            if why.len() > 3 {
                let more = why.len() - 3;
                why.truncate(3);
                why.push(format!("{more} more"));
            }
            format!(
                "{} ({}): create it with `{}`",
                m.role,
                why.join(", "),
                m.create
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
