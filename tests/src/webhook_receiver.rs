//! A webhook receiver on `127.0.0.1:0` that checks every delivery's signature with the
//! `standardwebhooks` crate (the spec's reference implementation, not Kiln's code), scriptable
//! to answer 503 a number of times or until told otherwise; and a tripwire listener that only
//! counts the connections made to it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tokio::time::Instant;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// The body, parsed.
    pub body: Value,
    /// Whether the signature verified with the secret the receiver was given.
    pub verified: bool,
    /// What the receiver answered.
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    secret: Option<String>,
    fail_next: usize,
    down: bool,
    deliveries: Vec<Delivery>,
}

/// A running receiver.
#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    /// Starts a receiver that answers 200 to every delivery.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            inner,
        }
    }

    /// The `whsec_` secret deliveries are verified with.
    pub fn set_secret(&self, secret: &str) {
        self.lock().secret = Some(secret.to_owned());
    }

    /// Answers 503 to the next `n` deliveries.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// Answers 503 to every delivery while `down`.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Deliveries so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    /// Waits until `n` deliveries have arrived, or panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.deliveries();
            if d.len() >= n {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "{} deliveries after {timeout:?}, wanted {n}",
                d.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("receiver mutex")
    }
}

/// Checks a delivery the way a subscriber following the spec would.
pub fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Ok(wh) = standardwebhooks::Webhook::new(secret) else {
        return false;
    };
    wh.verify(body, headers).is_ok()
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut g = inner.lock().expect("receiver mutex");
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let verified = g
        .secret
        .as_deref()
        .is_some_and(|s| verify(s, &headers, &body));
    let status = if g.down {
        StatusCode::SERVICE_UNAVAILABLE
    } else if g.fail_next > 0 {
        g.fail_next -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    g.deliveries.push(Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
        answered: status.as_u16(),
        at: Instant::now(),
    });
    status
}

/// A listener that accepts and counts connections and never answers.
pub struct Tripwire {
    /// Its address.
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl Tripwire {
    /// Starts one on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind tripwire");
        let addr = listener.local_addr().expect("tripwire address");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Self { addr, count }
    }

    /// Connections made so far.
    pub fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}
