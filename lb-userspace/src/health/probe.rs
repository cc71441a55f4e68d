//! The probes of each health-check type, as a real client of the protocol would speak it.
//! Each returns `Ok` for a healthy server or the reason it is not, in words fit for a log.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::state::ProbeResult;
use crate::config::{CheckKind, HealthCheck};

/// Run one probe of `check` against `target`, within the check's timeout.
pub async fn probe(check: &HealthCheck, target: SocketAddr) -> ProbeResult {
    match tokio::time::timeout(check.timeout(), probe_inner(check, target)).await {
        Ok(result) => result,
        Err(_) => Err(format!("timeout after {:?}", check.timeout())),
    }
}

async fn probe_inner(check: &HealthCheck, target: SocketAddr) -> ProbeResult {
    let mut conn = TcpStream::connect(target)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            _ => format!("connect: {e}"),
        })?;
    let _ = conn.set_nodelay(true);
    match check.kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Redis => redis(&mut conn).await,
        CheckKind::Http => http(check, target, &mut conn).await,
        CheckKind::Mysql => mysql(check, &mut conn).await,
        CheckKind::Postgres => postgres(check, &mut conn).await,
        CheckKind::Tls => tls(check, target, conn).await,
    }
}

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => format!("{what}: connection closed by the server"),
        std::io::ErrorKind::ConnectionReset => format!("{what}: connection reset"),
        _ => format!("{what}: {e}"),
    }
}

async fn redis(conn: &mut TcpStream) -> ProbeResult {
    conn.write_all(b"PING\r\n").await.map_err(io_err("write"))?;
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).await.map_err(io_err("read"))?;
    let reply = String::from_utf8_lossy(&buf[..n]);
    if reply.starts_with("+PONG") {
        Ok(())
    } else {
        Err(format!("redis answered {:?}", reply.trim()))
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    check: &HealthCheck,
    target: SocketAddr,
    conn: &mut S,
) -> ProbeResult {
    let method = check.method.as_deref().unwrap_or("GET");
    let path = check.path.as_deref().unwrap_or("/");
    let host = check
        .host_header
        .clone()
        .unwrap_or_else(|| target.ip().to_string());
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health-check\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes())
        .await
        .map_err(io_err("write"))?;
    let mut buf = vec![0u8; 1024];
    let mut read = 0;
    // The status line is all that matters; read until it is complete.
    while !buf[..read].contains(&b'\n') && read < buf.len() {
        let n = conn.read(&mut buf[read..]).await.map_err(io_err("read"))?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&buf[..read]);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    let expected = check.expected();
    if expected.accepts(code) {
        Ok(())
    } else {
        Err(format!("code {code}"))
    }
}

/// One MySQL protocol packet: (sequence id, payload).
async fn mysql_read(conn: &mut TcpStream) -> Result<(u8, Vec<u8>), String> {
    let mut header = [0u8; 4];
    conn.read_exact(&mut header).await.map_err(io_err("read"))?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload)
        .await
        .map_err(io_err("read"))?;
    Ok((header[3], payload))
}

async fn mysql_write(conn: &mut TcpStream, seq: u8, payload: &[u8]) -> ProbeResult {
    let len = (payload.len() as u32).to_le_bytes();
    let mut packet = vec![len[0], len[1], len[2], seq];
    packet.extend_from_slice(payload);
    conn.write_all(&packet).await.map_err(io_err("write"))
}

/// The server's ERR packet, as "error <code>: <message>".
fn mysql_error(payload: &[u8], capabilities: mysql_common::constants::CapabilityFlags) -> String {
    use mysql_common::{io::ParseBuf, packets::ErrPacket};
    match ParseBuf(payload).parse::<ErrPacket>(capabilities) {
        Ok(ErrPacket::Error(e)) => format!("error {}: {}", e.error_code(), e.message_str()),
        _ => "malformed ERR packet".to_string(),
    }
}

/// Read the server's handshake; with a `user`, log in (mysql_native_password, like HAProxy's
/// `option mysql-check user`, without a password) and say COM_QUIT.
async fn mysql(check: &HealthCheck, conn: &mut TcpStream) -> ProbeResult {
    use mysql_common::{
        constants::CapabilityFlags as Cap,
        io::ParseBuf,
        packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse},
        proto::MySerialize as _,
    };
    let (_, payload) = mysql_read(conn).await?;
    if payload.first() == Some(&0xff) {
        return Err(format!("refused: {}", mysql_error(&payload, Cap::empty())));
    }
    let handshake = ParseBuf(&payload)
        .parse::<HandshakePacket>(())
        .map_err(|e| format!("not a MySQL handshake: {e}"))?;
    let Some(user) = &check.user else {
        return Ok(());
    };
    let capabilities = Cap::CLIENT_PROTOCOL_41
        | Cap::CLIENT_SECURE_CONNECTION
        | Cap::CLIENT_LONG_PASSWORD
        | Cap::CLIENT_PLUGIN_AUTH;
    // A user without a password answers the scramble with nothing.
    let response = HandshakeResponse::new(
        Some(Vec::<u8>::new()),
        handshake.server_version_parsed().unwrap_or((5, 5, 3)),
        Some(user.as_bytes()),
        None::<&[u8]>,
        Some(AuthPlugin::MysqlNativePassword),
        capabilities,
        None,
        1 << 24,
    );
    let mut body = Vec::new();
    response.serialize(&mut body);
    mysql_write(conn, 1, &body).await?;
    let (mut seq, mut reply) = mysql_read(conn).await?;
    if reply.first() == Some(&0xfe) {
        // Auth switch: only mysql_native_password, with an empty password, is answered.
        let switch = ParseBuf(&reply)
            .parse::<AuthSwitchRequest>(())
            .map_err(|e| format!("malformed auth switch: {e}"))?;
        if switch.auth_plugin() != AuthPlugin::MysqlNativePassword {
            return Err(format!(
                "the server wants auth plugin {:?} for user {user:?}; create the check user with mysql_native_password and no password",
                String::from_utf8_lossy(switch.auth_plugin().as_bytes())
            ));
        }
        mysql_write(conn, seq.wrapping_add(1), &[]).await?;
        (seq, reply) = mysql_read(conn).await?;
    }
    let _ = seq;
    match reply.first() {
        Some(0x00) => {
            // COM_QUIT, so the server logs a clean disconnect rather than an aborted one.
            let _ = mysql_write(conn, 0, &[0x01]).await;
            Ok(())
        }
        Some(0xff) => Err(format!(
            "login as {user:?} refused: {}",
            mysql_error(&reply, capabilities)
        )),
        _ => Err("unexpected reply to the login".to_string()),
    }
}

/// Send a StartupMessage; an authentication request or an ErrorResponse means a live server.
async fn postgres(check: &HealthCheck, conn: &mut TcpStream) -> ProbeResult {
    use postgres_protocol::message::{backend, frontend};
    let user = check.user.as_deref().unwrap_or("lb");
    let mut buf = bytes::BytesMut::new();
    frontend::startup_message(
        [("user", user), ("application_name", "lb-health-check")],
        &mut buf,
    )
    .map_err(|e| format!("building the startup message: {e}"))?;
    conn.write_all(&buf).await.map_err(io_err("write"))?;
    let mut input = bytes::BytesMut::with_capacity(512);
    loop {
        if let Some(message) = backend::Message::parse(&mut input)
            .map_err(|e| format!("not a PostgreSQL reply: {e}"))?
        {
            let result = match message {
                backend::Message::AuthenticationOk
                | backend::Message::AuthenticationCleartextPassword
                | backend::Message::AuthenticationMd5Password(_)
                | backend::Message::AuthenticationSasl(_)
                | backend::Message::AuthenticationGss
                | backend::Message::AuthenticationSspi
                | backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationScmCredential
                | backend::Message::ErrorResponse(_) => Ok(()),
                _ => Err("unexpected first message from PostgreSQL".to_string()),
            };
            // Terminate, so the server sees a clean goodbye.
            let mut bye = bytes::BytesMut::new();
            frontend::terminate(&mut bye);
            let _ = conn.write_all(&bye).await;
            return result;
        }
        if conn.read_buf(&mut input).await.map_err(io_err("read"))? == 0 {
            return Err("connection closed by the server before it answered".to_string());
        }
    }
}

/// Complete a TLS handshake. The certificate is not verified: the check asks whether the
/// server's TLS stack answers, and self-signed backend certificates are common.
async fn tls(check: &HealthCheck, target: SocketAddr, conn: TcpStream) -> ProbeResult {
    let name = match &check.host_header {
        Some(host) => rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("host_header {host:?} is not a TLS server name: {e}"))?,
        None => rustls::pki_types::ServerName::IpAddress(target.ip().into()),
    };
    let connector = tokio_rustls::TlsConnector::from(crate::tls::insecure_client_config());
    let mut stream = connector
        .connect(name, conn)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let _ = stream.shutdown().await;
    Ok(())
}
