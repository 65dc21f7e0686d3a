//! Just enough of PostgreSQL's `pgoutput` protocol (version 1) to name the
//! rows a slot holds: which transactions committed after a position, and
//! the tables and keys they changed. Used by the check after a cutover,
//! which peeks at the old direction's slot: any change committed on the old
//! primary after the switch is a write the new primary does not have.

use std::collections::HashMap;

/// One row change of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `schema.table`.
    pub table: String,
    /// `insert`, `update`, `delete` or `truncate`.
    pub kind: &'static str,
    /// The row's key, e.g. `id=5` (empty when the message carried none).
    pub key: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{} {}", self.table, self.kind)
        } else {
            write!(f, "{} {} {}", self.table, self.key, self.kind)
        }
    }
}

struct Relation {
    name: String,
    /// Column names, and whether each is part of the key.
    columns: Vec<(String, bool)>,
}

/// Decodes the messages of a slot (in order) and returns the changes of
/// the transactions that committed after `after` (an LSN as a number).
/// Messages it does not know are skipped; a message it cannot read ends the
/// decoding with an error naming it.
pub fn changes_after(messages: &[Vec<u8>], after: u64) -> Result<Vec<Change>, String> {
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut out = Vec::new();
    let mut keep = false;
    for m in messages {
        let mut r = Reader { b: m, at: 0 };
        match r.byte()? {
            b'B' => {
                let final_lsn = r.u64()?;
                keep = final_lsn > after;
            }
            b'C' => keep = false,
            // The transaction came from elsewhere (a subscription applied
            // it): not a write made on this server.
            b'O' => keep = false,
            b'R' => {
                let oid = r.u32()?;
                let ns = r.string()?;
                let name = r.string()?;
                let _ident = r.byte()?;
                let n = r.u16()?;
                let mut columns = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let flags = r.byte()?;
                    let col = r.string()?;
                    let _type = r.u32()?;
                    let _mod = r.u32()?;
                    columns.push((col, flags & 1 == 1));
                }
                relations.insert(
                    oid,
                    Relation {
                        name: format!("{ns}.{name}"),
                        columns,
                    },
                );
            }
            kind @ (b'I' | b'U' | b'D') => {
                let oid = r.u32()?;
                let rel = relations.get(&oid);
                // Update: an optional old tuple ('K' or 'O'), then 'N'.
                // Insert: 'N'. Delete: 'K' or 'O'.
                let mut tuple = None;
                while r.at < r.b.len() {
                    let tag = r.byte()?;
                    let t = r.tuple()?;
                    if tag == b'N' || tuple.is_none() {
                        tuple = Some(t);
                    }
                }
                if keep {
                    out.push(Change {
                        table: rel
                            .map(|r| r.name.clone())
                            .unwrap_or_else(|| format!("relation {oid}")),
                        kind: match kind {
                            b'I' => "insert",
                            b'U' => "update",
                            _ => "delete",
                        },
                        key: match (rel, tuple) {
                            (Some(rel), Some(t)) => key_of(rel, &t),
                            _ => String::new(),
                        },
                    });
                }
            }
            b'T' => {
                let n = r.u32()?;
                let _options = r.byte()?;
                for _ in 0..n {
                    let oid = r.u32()?;
                    if keep {
                        out.push(Change {
                            table: relations
                                .get(&oid)
                                .map(|r| r.name.clone())
                                .unwrap_or_else(|| format!("relation {oid}")),
                            kind: "truncate",
                            key: String::new(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn key_of(rel: &Relation, tuple: &[Option<String>]) -> String {
    let parts: Vec<String> = rel
        .columns
        .iter()
        .zip(tuple)
        .filter(|((_, key), _)| *key)
        .map(|((name, _), v)| format!("{name}={}", v.as_deref().unwrap_or("NULL")))
        .collect();
    parts.join(",")
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at + n;
        if end > self.b.len() {
            return Err(format!(
                "a pgoutput message ended early ({} bytes, needed {end})",
                self.b.len()
            ));
        }
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let rest = &self.b[self.at..];
        let n = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or("a pgoutput string has no terminator")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }
    /// TupleData: the columns' values as text (`None`: null or unchanged).
    fn tuple(&mut self) -> Result<Vec<Option<String>>, String> {
        let n = self.u16()?;
        let mut v = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match self.byte()? {
                b'n' | b'u' => v.push(None),
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    v.push(Some(String::from_utf8_lossy(self.take(len)?).into_owned()));
                }
                other => return Err(format!("a pgoutput tuple has a column of kind {other}")),
            }
        }
        Ok(v)
    }
}

/// An LSN (`16/B374D848`) as a number.
pub fn lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(lsn: u64) -> Vec<u8> {
        let mut m = vec![b'B'];
        m.extend(lsn.to_be_bytes());
        m.extend(0u64.to_be_bytes());
        m.extend(7u32.to_be_bytes());
        m
    }

    fn relation() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(16384u32.to_be_bytes());
        m.extend(b"public\0orders\0");
        m.push(b'd');
        m.extend(2u16.to_be_bytes());
        for (flags, name) in [(1u8, "id"), (0, "item")] {
            m.push(flags);
            m.extend(name.as_bytes());
            m.push(0);
            m.extend(20u32.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut m = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => m.push(b'n'),
                Some(s) => {
                    m.push(b't');
                    m.extend((s.len() as u32).to_be_bytes());
                    m.extend(s.as_bytes());
                }
            }
        }
        m
    }

    fn insert(id: &str) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend(16384u32.to_be_bytes());
        m.push(b'N');
        m.extend(tuple(&[Some(id), Some("x")]));
        m
    }

    fn delete(id: &str) -> Vec<u8> {
        let mut m = vec![b'D'];
        m.extend(16384u32.to_be_bytes());
        m.push(b'K');
        m.extend(tuple(&[Some(id), None]));
        m
    }

    #[test]
    fn only_transactions_committed_after_the_position_are_named_with_their_keys() {
        let msgs = vec![
            begin(100),
            relation(),
            insert("1"),
            vec![b'C'],
            begin(300),
            insert("5"),
            delete("2"),
            vec![b'C'],
        ];
        let c = changes_after(&msgs, 200).unwrap();
        let named: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            named,
            vec!["public.orders id=5 insert", "public.orders id=2 delete"]
        );
        assert!(changes_after(&msgs, 300).unwrap().is_empty());
        assert_eq!(changes_after(&msgs, 0).unwrap().len(), 3);
    }

    #[test]
    fn a_transaction_a_subscription_applied_is_not_a_local_write() {
        let mut origin = vec![b'O'];
        origin.extend(5u64.to_be_bytes());
        origin.extend(b"pg_16405\0");
        let msgs = vec![
            begin(300),
            origin,
            relation(),
            insert("7"),
            vec![b'C'],
            begin(400),
            insert("8"),
            vec![b'C'],
        ];
        let named: Vec<String> = changes_after(&msgs, 0)
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(named, vec!["public.orders id=8 insert"]);
    }

    #[test]
    fn a_cut_message_is_an_error_not_silence() {
        let mut cut = insert("5");
        cut.truncate(6);
        let e = changes_after(&[begin(10), relation(), cut], 0).unwrap_err();
        assert!(e.contains("ended early"), "{e}");
    }

    #[test]
    fn lsns_are_read_as_numbers() {
        assert_eq!(lsn("0/10"), Some(16));
        assert_eq!(lsn("1/0"), Some(1 << 32));
        assert_eq!(lsn("nope"), None);
    }
}
