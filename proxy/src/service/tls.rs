//! TLS listener glue: remember the SNI name of each connection so that `request_filter` can
//! refuse (421) a request whose Host belongs to another route than the certificate chosen for
//! the connection.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;

/// The SNI name a connection was opened with (`None`: the client sent none).
#[derive(Debug, Clone)]
pub struct Sni(pub Option<Box<str>>);

/// Stores [`Sni`] in the connection's TLS digest when the handshake completes.
#[derive(Debug, Default)]
pub struct SniCapture;

#[async_trait]
impl TlsAccept for SniCapture {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(Sni(tls.server_name().map(Into::into))))
    }
}
