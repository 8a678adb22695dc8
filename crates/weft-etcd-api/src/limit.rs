//! The per-client request rate (`Config::max_requests_per_client`) on the calls tonic serves:
//! a request over it is answered `RESOURCE_EXHAUSTED` without reaching the service. The fast
//! path and the JSON gateway check the same limiter themselves ([`EtcdApi::admit`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::Status;

use crate::EtcdApi;

/// `inner` behind one connection's client rate.
#[derive(Clone)]
pub(crate) struct RateLimited<S> {
    inner: S,
    rate: Arc<weft_tls::limit::Rate>,
    peer: Option<IpAddr>,
    /// The connection's client certificate's common name, handed to each request.
    cert_user: Option<Arc<str>>,
}

impl<S> RateLimited<S> {
    /// `inner` for the connection `api` serves.
    pub(crate) fn new(inner: S, api: &EtcdApi) -> Self {
        RateLimited {
            inner,
            rate: api.rate.clone(),
            peer: api.peer,
            cert_user: api.cert_user.clone(),
        }
    }
}

type Req = http::Request<tonic::body::Body>;
type Resp = http::Response<tonic::body::Body>;

impl<S> tower::Service<Req> for RateLimited<S>
where
    S: tower::Service<Req, Response = Resp, Error = Infallible>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Resp, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        if let Some(cn) = &self.cert_user {
            req.extensions_mut()
                .insert(crate::auth::CertUser(cn.clone()));
        }
        match self.peer.filter(|ip| !self.rate.admit(*ip)) {
            None => Either::Left(self.inner.call(req)),
            Some(ip) => {
                let resp = over_rate(&self.rate, ip).into_http();
                Either::Right(futures::future::ready(Ok(resp)))
            }
        }
    }
}

/// The status of a request over its client's rate.
fn over_rate(rate: &weft_tls::limit::Rate, ip: IpAddr) -> Status {
    Status::resource_exhausted(format!(
        "etcdserver: too many requests: over {} a second from {ip} (--etcd-max-requests-per-client); retry later",
        rate.per_second()
    ))
}

impl EtcdApi {
    /// Takes a request token from this connection's client: `RESOURCE_EXHAUSTED` when it is
    /// over its rate.
    pub(crate) fn admit(&self) -> Result<(), Status> {
        match self.peer.filter(|ip| !self.rate.admit(*ip)) {
            None => Ok(()),
            Some(ip) => Err(over_rate(&self.rate, ip)),
        }
    }
}
