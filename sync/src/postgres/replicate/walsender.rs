//! A connection in PostgreSQL's replication mode (`replication=database`),
//! which tokio-postgres does not offer. switchyard needs exactly one thing
//! from it: `CREATE_REPLICATION_SLOT … LOGICAL pgoutput (SNAPSHOT 'export')`,
//! which creates the slot and exports the snapshot the slot starts from, so
//! that the clone copies exactly what the stream will not send again. The
//! snapshot stays valid while this connection stays open and idle, so the
//! connection is kept until the clone (and its verification) are done.
//!
//! The protocol spoken here is the simple-query subset of the frontend/backend
//! protocol (version 3.0) with trust, cleartext, MD5 and SCRAM-SHA-256
//! authentication, over plain TCP or a Unix socket.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use crate::error::{Side, SyncError};
use crate::pg;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// An open replication connection.
pub struct WalSender {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    side: Side,
}

/// What `CREATE_REPLICATION_SLOT` answered.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// The LSN from which the slot streams changes (`consistent_point`).
    pub consistent_point: String,
    /// The exported snapshot, valid while the connection is open.
    pub snapshot: String,
}

impl WalSender {
    /// Connects to the database of `url` in replication mode.
    pub async fn connect(side: Side, url: &str) -> Result<WalSender, SyncError> {
        let target = pg::target(side, url)?;
        let config = target.config;
        let err = |message: String| SyncError::Connect {
            side,
            url: switchyard_config::redact_url(url),
            message: format!("replication connection: {message}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let stream: Box<dyn Stream> = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => {
                let mut s = tokio::net::TcpStream::connect((h.as_str(), port))
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let _ = s.set_nodelay(true);
                match crate::tls::client_config(side, &target.tls)? {
                    None => Box::new(s),
                    Some(tls) => {
                        // SSLRequest: the server answers 'S' (go ahead) or 'N'.
                        let mut req = BytesMut::new();
                        frontend::ssl_request(&mut req);
                        s.write_all(&req).await.map_err(|e| err(e.to_string()))?;
                        let mut answer = [0u8; 1];
                        s.read_exact(&mut answer)
                            .await
                            .map_err(|e| err(e.to_string()))?;
                        match answer[0] {
                            b'S' => {
                                let name = crate::tls::server_name(h).map_err(err)?;
                                let t = tokio_rustls::TlsConnector::from(tls)
                                    .connect(name, s)
                                    .await
                                    .map_err(|e| err(format!("TLS: {e}")))?;
                                Box::new(t)
                            }
                            _ if target.tls.mode == crate::tls::SslMode::Prefer => Box::new(s),
                            _ => {
                                return Err(err(format!(
                                    "the server does not offer TLS, which sslmode={} requires",
                                    target.tls.mode.as_str()
                                )))
                            }
                        }
                    }
                }
            }
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(
                    tokio::net::UnixStream::connect(&path)
                        .await
                        .map_err(|e| err(format!("{}: {e}", path.display())))?,
                )
            }
            None => Box::new(
                tokio::net::TcpStream::connect(("localhost", port))
                    .await
                    .map_err(|e| err(e.to_string()))?,
            ),
        };
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let mut ws = WalSender {
            stream,
            buf: BytesMut::with_capacity(8192),
            side,
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user.as_str()),
                ("database", dbname.as_str()),
                ("replication", "database"),
                ("application_name", "switchyard"),
                ("client_encoding", "UTF8"),
            ],
            &mut out,
        )
        .map_err(|e| err(e.to_string()))?;
        ws.send(&out).await.map_err(|e| err(e.to_string()))?;
        ws.authenticate(config.get_password(), &user)
            .await
            .map_err(err)?;
        Ok(ws)
    }

    async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    async fn next(&mut self) -> Result<Message, String> {
        loop {
            match Message::parse(&mut self.buf).map_err(|e| e.to_string())? {
                Some(m) => return Ok(m),
                None => {
                    let n = self
                        .stream
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("the server closed the connection".into());
                    }
                }
            }
        }
    }

    async fn authenticate(&mut self, password: Option<&[u8]>, user: &str) -> Result<(), String> {
        let need = || {
            "the server asks for a password: put it in the URL, PGPASSWORD or ~/.pgpass".to_string()
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut out = BytesMut::new();
            match self.next().await? {
                Message::AuthenticationOk => break,
                Message::AuthenticationCleartextPassword => {
                    let pw = password.ok_or_else(need)?;
                    frontend::password_message(pw, &mut out).map_err(|e| e.to_string())?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = password.ok_or_else(need)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        pw,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|e| e.to_string())?;
                }
                Message::AuthenticationSasl(body) => {
                    let pw = password.ok_or_else(need)?;
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next().map_err(|e| e.to_string())? {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(
                            "the server offers no SASL mechanism switchyard speaks (SCRAM-SHA-256)"
                                .into(),
                        );
                    }
                    let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)
                        .map_err(|e| e.to_string())?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or("unexpected SASL message")?;
                    s.update(body.data()).map_err(|e| e.to_string())?;
                    frontend::sasl_response(s.message(), &mut out).map_err(|e| e.to_string())?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or("unexpected SASL message")?;
                    s.finish(body.data()).map_err(|e| e.to_string())?;
                    continue;
                }
                Message::ErrorResponse(body) => return Err(error_text(&body)),
                _ => return Err("unsupported authentication method".into()),
            }
            self.send(&out).await.map_err(|e| e.to_string())?;
        }
        // Parameter statuses and the backend key follow, then ReadyForQuery.
        loop {
            match self.next().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(error_text(&body)),
                _ => {}
            }
        }
    }

    /// Runs one replication command and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, SyncError> {
        let side = self.side;
        let fail = |message: String| SyncError::Query {
            side,
            context: format!("replication command `{sql}`"),
            message,
        };
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| fail(e.to_string()))?;
        self.send(&out).await.map_err(|e| fail(e.to_string()))?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next().await.map_err(fail)? {
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut cells = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(r) = ranges.next().map_err(|e| fail(e.to_string()))? {
                        cells.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(cells);
                }
                Message::ErrorResponse(body) => error = Some(error_text(&body)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(fail(e)),
            None => Ok(rows),
        }
    }

    /// Creates a logical replication slot for `pgoutput` and exports the
    /// snapshot it starts from.
    pub async fn create_slot(&mut self, name: &str) -> Result<CreatedSlot, SyncError> {
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                pg::ident(name)
            ))
            .await?;
        let row = rows.into_iter().next().unwrap_or_default();
        let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(CreatedSlot {
            slot_name: cell(0),
            consistent_point: cell(1),
            snapshot: cell(2),
        })
    }

    /// Closes the connection politely (the exported snapshot ends with it).
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.send(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

fn error_text(body: &postgres_protocol::message::backend::ErrorResponseBody) -> String {
    let mut severity = String::new();
    let mut message = String::new();
    let mut detail = String::new();
    let mut hint = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => severity = v,
            b'M' => message = v,
            b'D' => detail = format!(" (detail: {v})"),
            b'H' => hint = format!(" (hint: {v})"),
            _ => {}
        }
    }
    format!("{severity}: {message}{detail}{hint}")
}
