//! The schema side of verification: a fingerprint of every user object in a
//! database (schemas, extensions, tables and their columns, constraints,
//! indexes and whether they are valid, triggers, row-level security
//! policies, views, materialized views and whether they are populated,
//! sequences, functions, types; owners and grants when they are cloned),
//! each as a name and a definition that does not depend on OIDs, so two
//! clusters can be compared object by object.
//!
//! `migrate` records which objects each migration changed (the difference
//! of fingerprints before and after it, inside its transaction), so that
//! verify can tell a difference a migration made on purpose from one that
//! means green is not what blue was.

use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::Client;

use crate::error::{Side, SyncError};
use crate::pg;
pub use crate::verdict::{ObjectKind, Problem, SchemaDifference};

/// Every user object of a database: (kind, name) → definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog(pub BTreeMap<(ObjectKind, String), String>);

/// The schemas and objects left out: PostgreSQL's own, switchyard's, and
/// Flyway's history table.
fn filter() -> String {
    pg::SYSTEM_SCHEMA_FILTER.to_string()
}

fn not_extension(classid: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{classid}'::regclass AND d.objid = {oid} AND d.deptype = 'e')"
    )
}

/// The queries, one per kind: each returns (name, definition).
fn queries(with_roles: bool) -> Vec<(ObjectKind, String)> {
    let f = filter();
    let rel_ok = format!(
        "{f} AND c.relname <> '{}' AND {}",
        crate::migrate::HISTORY_TABLE,
        not_extension("pg_class", "c.oid")
    );
    let mut q = vec![
        (
            ObjectKind::Schema,
            format!("SELECT n.nspname::text, '' FROM pg_namespace n WHERE {f} AND {}", not_extension("pg_namespace", "n.oid")),
        ),
        (
            ObjectKind::Extension,
            "SELECT extname::text, extversion FROM pg_extension WHERE extname <> 'plpgsql'".into(),
        ),
        (
            ObjectKind::Table,
            format!(
                "SELECT n.nspname || '.' || c.relname, \
                        concat_ws(' ', CASE c.relkind WHEN 'p' THEN 'partitioned' WHEN 'f' THEN 'foreign' ELSE 'table' END, \
                                  CASE c.relpersistence WHEN 'u' THEN 'unlogged' END, \
                                  CASE WHEN c.relrowsecurity THEN 'row-level-security' END, \
                                  CASE WHEN c.relforcerowsecurity THEN 'forced' END, \
                                  CASE WHEN c.relispartition THEN 'partition ' || pg_get_expr(c.relpartbound, c.oid) END) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p', 'f') AND {rel_ok}"
            ),
        ),
        (
            ObjectKind::Column,
            format!(
                "SELECT n.nspname || '.' || c.relname || '.' || a.attname, \
                        concat_ws(' ', format_type(a.atttypid, a.atttypmod), \
                                  CASE WHEN a.attnotnull THEN 'not null' END, \
                                  CASE WHEN a.attgenerated <> '' THEN 'generated ' || pg_get_expr(ad.adbin, ad.adrelid) \
                                       WHEN ad.adbin IS NOT NULL THEN 'default ' || pg_get_expr(ad.adbin, ad.adrelid) END, \
                                  CASE WHEN NOT c.relispartition THEN \
                                    CASE a.attidentity WHEN 'a' THEN 'identity always' WHEN 'd' THEN 'identity by default' END END, \
                                  CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation \
                                       THEN 'collate ' || (SELECT collname FROM pg_collation WHERE oid = a.attcollation) END) \
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                   JOIN pg_type t ON t.oid = a.atttypid \
                   LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
                  WHERE c.relkind IN ('r', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped AND {rel_ok}"
            ),
        ),
        (
            ObjectKind::Constraint,
            format!(
                "SELECT n.nspname || '.' || coalesce(c.relname, t.typname) || '.' || con.conname, \
                        pg_get_constraintdef(con.oid) || CASE WHEN con.convalidated THEN '' ELSE ' (not validated)' END \
                   FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace \
                   LEFT JOIN pg_class c ON c.oid = con.conrelid LEFT JOIN pg_type t ON t.oid = con.contypid \
                  WHERE {f} AND coalesce(c.relname, '') <> '{}' AND {} AND con.contype <> 'n'",
                crate::migrate::HISTORY_TABLE,
                not_extension("pg_constraint", "con.oid")
            ),
        ),
        (
            ObjectKind::Index,
            format!(
                "SELECT n.nspname || '.' || ic.relname, \
                        pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' (INVALID)' END \
                   FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid \
                   JOIN pg_namespace n ON n.oid = ic.relnamespace \
                  WHERE {rel_ok}"
            ),
        ),
        (
            ObjectKind::Trigger,
            format!(
                "SELECT n.nspname || '.' || c.relname || '.' || tg.tgname, \
                        pg_get_triggerdef(tg.oid) || CASE tg.tgenabled WHEN 'D' THEN ' (disabled)' WHEN 'R' THEN ' (replica)' WHEN 'A' THEN ' (always)' ELSE '' END \
                   FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE NOT tg.tgisinternal AND {rel_ok}"
            ),
        ),
        (
            ObjectKind::Policy,
            format!(
                "SELECT n.nspname || '.' || c.relname || '.' || p.polname, \
                        concat_ws(' ', CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END, p.polcmd::text, \
                                  'to', (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END, ',' ORDER BY 1) FROM unnest(p.polroles) r), \
                                  'using', pg_get_expr(p.polqual, p.polrelid), 'check', pg_get_expr(p.polwithcheck, p.polrelid)) \
                   FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE {rel_ok}"
            ),
        ),
        (
            ObjectKind::View,
            format!(
                "SELECT n.nspname || '.' || c.relname, pg_get_viewdef(c.oid) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'v' AND {rel_ok}"
            ),
        ),
        (
            ObjectKind::MaterializedView,
            format!(
                "SELECT n.nspname || '.' || c.relname, \
                        pg_get_viewdef(c.oid) || CASE WHEN c.relispopulated THEN '' ELSE ' (NOT POPULATED)' END \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'm' AND {rel_ok}"
            ),
        ),
        (
            ObjectKind::Sequence,
            format!(
                "SELECT n.nspname || '.' || c.relname, \
                        concat_ws(' ', format_type(s.seqtypid, NULL), 'increment', s.seqincrement, 'min', s.seqmin, \
                                  'max', s.seqmax, 'start', s.seqstart, CASE WHEN s.seqcycle THEN 'cycle' END) \
                   FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE {rel_ok}"
            ),
        ),
        (
            ObjectKind::Function,
            format!(
                "SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', \
                        CASE WHEN p.prokind IN ('f', 'p') THEN md5(pg_get_functiondef(p.oid)) \
                             ELSE p.prokind::text || ' returns ' || pg_get_function_result(p.oid) END \
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {f} AND {}",
                not_extension("pg_proc", "p.oid")
            ),
        ),
        (
            ObjectKind::Type,
            format!(
                "SELECT n.nspname || '.' || t.typname, \
                        CASE t.typtype \
                          WHEN 'e' THEN 'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid) || ')' \
                          WHEN 'd' THEN 'domain ' || format_type(t.typbasetype, t.typtypmod) || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END \
                                        || coalesce(' default ' || t.typdefault, '') \
                          WHEN 'c' THEN 'composite (' || (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) \
                                                          FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) || ')' \
                          WHEN 'r' THEN 'range of ' || (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid) \
                          ELSE 'base type' END \
                   FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                  WHERE {f} AND t.typtype IN ('e', 'd', 'c', 'r', 'b') \
                    AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') \
                    AND NOT (t.typtype = 'b' AND t.typcategory = 'A') AND {}",
                not_extension("pg_type", "t.oid")
            ),
        ),
    ];
    if with_roles {
        q.push((
            ObjectKind::Owner,
            format!(
                "SELECT n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner)::text \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S') AND {rel_ok} \
                 UNION ALL \
                 SELECT 'schema ' || n.nspname, pg_get_userbyid(n.nspowner)::text FROM pg_namespace n WHERE {f} AND n.nspname <> 'public' \
                 UNION ALL \
                 SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', pg_get_userbyid(p.proowner)::text \
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {f} AND {}",
                not_extension("pg_proc", "p.oid")
            ),
        ));
        q.push((
            ObjectKind::Grants,
            format!(
                "SELECT n.nspname || '.' || c.relname, coalesce(c.relacl::text, 'default') \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S') AND {rel_ok} \
                 UNION ALL \
                 SELECT 'schema ' || n.nspname, coalesce(n.nspacl::text, 'default') FROM pg_namespace n WHERE {f} \
                 UNION ALL \
                 SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', coalesce(p.proacl::text, 'default') \
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {f} AND {}",
                not_extension("pg_proc", "p.oid")
            ),
        ));
        q.push((
            ObjectKind::DefaultPrivileges,
            "SELECT 'for ' || pg_get_userbyid(d.defaclrole) || coalesce(' in schema ' || n.nspname, '') || ' on ' || d.defaclobjtype::text, \
                    d.defaclacl::text \
               FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace"
                .into(),
        ));
    }
    q
}

/// Reads the fingerprint of the database behind `client` (inside whatever
/// transaction or snapshot it is in). `with_roles` adds owners and grants.
pub async fn fingerprint(
    client: &Client,
    side: Side,
    with_roles: bool,
) -> Result<Catalog, SyncError> {
    let mut out = BTreeMap::new();
    for (kind, sql) in queries(with_roles) {
        let rows = client.query(&sql, &[]).await.map_err(|e| {
            SyncError::query(side, format!("reading the catalog ({})", kind.as_str()), &e)
        })?;
        for r in rows {
            let name: String = r.get(0);
            let def: Option<String> = r.get(1);
            out.insert((kind, name), def.unwrap_or_default());
        }
    }
    Ok(Catalog(out))
}

/// The objects that differ between `blue` and `green`, in kind and name order.
pub fn diff(blue: &Catalog, green: &Catalog) -> Vec<SchemaDifference> {
    let keys: BTreeSet<&(ObjectKind, String)> = blue.0.keys().chain(green.0.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (b, g) = (blue.0.get(k), green.0.get(k));
        let problem = match (b, g) {
            (Some(_), None) => Problem::MissingOnGreen,
            (None, Some(_)) => Problem::OnlyOnGreen,
            (Some(b), Some(g)) if b != g => Problem::Differs,
            _ => continue,
        };
        out.push(SchemaDifference {
            kind: k.0,
            name: k.1.clone(),
            problem,
            blue: b.cloned(),
            green: g.cloned(),
            expected: None,
        });
    }
    out
}

/// Views and materialized views whose definitions differ only in how the
/// two servers print them (16 prints single-table views without qualified
/// columns, say): the source's definition is parsed again on the target
/// (as a temporary view, in a transaction rolled back) and printed by the
/// target; a definition that then reads the same is no difference. What
/// cannot be parsed there, or still differs, stays a difference.
pub async fn reparse_views(target: &Client, side: Side, diffs: &mut Vec<SchemaDifference>) {
    const NP: &str = " (NOT POPULATED)";
    let mut keep = Vec::with_capacity(diffs.len());
    for d in diffs.drain(..) {
        let view = matches!(d.kind, ObjectKind::View | ObjectKind::MaterializedView);
        let (Some(b), Some(g), true) = (&d.blue, &d.green, view) else {
            keep.push(d);
            continue;
        };
        let (b_def, b_np) = (b.trim_end_matches(NP), b.ends_with(NP));
        let (g_def, g_np) = (g.trim_end_matches(NP), g.ends_with(NP));
        if b_np != g_np {
            keep.push(d);
            continue;
        }
        let sql = format!(
            "BEGIN; SET LOCAL default_transaction_read_only = off; CREATE TEMP VIEW switchyard_reparse AS {}",
            b_def.trim_end().trim_end_matches(';')
        );
        let same = async {
            target.batch_execute(&sql).await.ok()?;
            let r = target
                .query_one("SELECT pg_get_viewdef('switchyard_reparse'::regclass)", &[])
                .await
                .ok()?;
            Some(r.get::<_, String>(0).trim() == g_def.trim())
        }
        .await;
        let _ = target.batch_execute("ROLLBACK").await;
        if same != Some(true) {
            keep.push(d);
        }
    }
    let _ = side;
    *diffs = keep;
}

/// The objects one migration changed: (kind, name) of every difference
/// between the fingerprints before and after it.
pub fn changed(before: &Catalog, after: &Catalog) -> Vec<(ObjectKind, String)> {
    diff(before, after)
        .into_iter()
        .map(|d| (d.kind, d.name))
        .collect()
}

/// Records in green which objects `script` changed (inside the migration's
/// transaction, so it is kept exactly when the migration is).
pub async fn record_changes(
    green: &Client,
    side: Side,
    script: &str,
    changes: &[(ObjectKind, String)],
) -> Result<(), SyncError> {
    for (kind, name) in changes {
        let k = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        green
            .execute(
                "INSERT INTO switchyard.migration_changes (script, kind, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&script, &k, name],
            )
            .await
            .map_err(|e| SyncError::query(side, "recording what a migration changed", &e))?;
    }
    Ok(())
}

/// What migrations changed on purpose: (kind, name) → script.
pub async fn expected_changes(
    green: &Client,
    side: Side,
) -> Result<BTreeMap<(ObjectKind, String), String>, SyncError> {
    let rows = match green
        .query(
            "SELECT kind, name, script FROM switchyard.migration_changes ORDER BY id",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(BTreeMap::new())
        }
        Err(e) => return Err(SyncError::query(side, "reading migration changes", &e)),
    };
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind = ObjectKind::parse(&r.get::<_, String>(0))?;
            Some(((kind, r.get::<_, String>(1)), r.get::<_, String>(2)))
        })
        .collect())
}

/// Marks the differences a migration made on purpose. A table a migration
/// dropped or created also explains its columns, constraints, indexes and
/// triggers.
pub fn mark_expected(
    diffs: &mut [SchemaDifference],
    expected: &BTreeMap<(ObjectKind, String), String>,
) {
    for d in diffs.iter_mut() {
        if let Some(m) = expected.get(&(d.kind, d.name.clone())) {
            d.expected = Some(m.clone());
        }
    }
}

/// Large objects: (count, checksum of their contents).
pub async fn large_objects(client: &Client, side: Side) -> Result<(i64, String), SyncError> {
    let r = client
        .query_one(
            "SELECT count(*), coalesce(sum(('x' || substr(md5(lo_get(oid)), 1, 15))::bit(60)::int8), 0)::text \
               FROM pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "checksumming large objects", &e))?;
    Ok((r.get(0), r.get(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(entries: &[(ObjectKind, &str, &str)]) -> Catalog {
        Catalog(
            entries
                .iter()
                .map(|(k, n, d)| ((*k, n.to_string()), d.to_string()))
                .collect(),
        )
    }

    #[test]
    fn differences_are_named_and_migrations_explain_theirs() {
        let blue = cat(&[
            (
                ObjectKind::Index,
                "public.a_pkey",
                "CREATE UNIQUE INDEX a_pkey ON public.a USING btree (id)",
            ),
            (
                ObjectKind::Trigger,
                "public.a.audit",
                "CREATE TRIGGER audit ...",
            ),
            (ObjectKind::Column, "public.a.old", "text"),
        ]);
        let green = cat(&[
            (
                ObjectKind::Index,
                "public.a_pkey",
                "CREATE UNIQUE INDEX a_pkey ON public.a USING btree (id) (INVALID)",
            ),
            (ObjectKind::Column, "public.a.new", "text"),
        ]);
        let mut d = diff(&blue, &green);
        assert_eq!(d.len(), 4);
        let text: Vec<String> = d.iter().map(|x| x.to_string()).collect();
        assert!(
            text.contains(&"column public.a.old missing on green".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"trigger public.a.audit missing on green".to_string()),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("index public.a_pkey is invalid on green")),
            "{text:?}"
        );
        let mut expected = BTreeMap::new();
        expected.insert(
            (ObjectKind::Column, "public.a.new".into()),
            "V2__new.sql".into(),
        );
        mark_expected(&mut d, &expected);
        let new = d.iter().find(|x| x.name == "public.a.new").unwrap();
        assert_eq!(new.expected.as_deref(), Some("V2__new.sql"));
        assert!(d.iter().filter(|x| x.expected.is_none()).count() == 3);
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in [
            ObjectKind::MaterializedView,
            ObjectKind::DefaultPrivileges,
            ObjectKind::Index,
        ] {
            let s = serde_json::to_value(k).unwrap();
            assert_eq!(ObjectKind::parse(s.as_str().unwrap()), Some(k));
        }
    }
}
