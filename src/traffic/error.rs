//! Errors of the request path and their one mapping to HTTP responses. Every synthetic
//! response carries `x-flowgate-error` and a one-line text body, so operators can tell
//! flowgate's answers from Node-RED's.

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::traffic::body::Body;

pub const ERROR_HEADER: &str = "x-flowgate-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no active Node-RED instance (failover in progress or none healthy); retry shortly")]
    NoActiveInstance,
    #[error("could not connect to the active Node-RED instance")]
    UpstreamConnect,
    #[error("the active Node-RED instance failed while answering; the request was not replayed")]
    UpstreamFailed,
    #[error("the Node-RED instance handling this request was declared failed; the request was not replayed")]
    InstanceFailed,
    #[error("every connection to the active Node-RED instance stayed busy; nothing was sent, retry shortly")]
    UpstreamBusy,
    #[error("the active Node-RED instance refused these credentials; nothing was read or sent")]
    Unauthorized,
    #[error(
        "these credentials could not be checked with the active Node-RED instance in time; nothing was read or sent, retry shortly"
    )]
    CredentialsUnchecked,
    #[error("too many open connections; retry soon")]
    TooManyConnections,
    #[error("the request body stopped arriving")]
    BodyTimeout,
    #[error("malformed request")]
    BadRequest,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("deploy refused: {0}")]
    BadDeploy(&'static str),
    #[error("a failover, deploy or resync is in progress; nothing was applied, retry shortly")]
    ChangeInProgress,
    #[error(
        "flowgate owns the flow state of every instance; use POST /switchover on flowgate's admin API to move the active role"
    )]
    FlowStateOwned,
    #[error(
        "no flowgate replica is the controller right now (etcd unreachable or an election running); nothing was applied, retry shortly"
    )]
    NoController,
    #[error("the controller replica could not be reached; nothing is known to be applied, retry shortly")]
    ControllerUnreachable,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoActiveInstance => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::InstanceFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::CredentialsUnchecked => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadDeploy(_) => StatusCode::BAD_REQUEST,
            ProxyError::ChangeInProgress => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::FlowStateOwned => StatusCode::FORBIDDEN,
            ProxyError::NoController => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ControllerUnreachable => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ProxyError::NoActiveInstance => "no-active-instance",
            ProxyError::UpstreamConnect => "upstream-connect",
            ProxyError::UpstreamFailed => "upstream-failed",
            ProxyError::InstanceFailed => "instance-failed",
            ProxyError::UpstreamBusy => "upstream-busy",
            ProxyError::BodyTimeout => "body-timeout",
            ProxyError::TooManyConnections => "too-many-connections",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::CredentialsUnchecked => "credentials-unchecked",
            ProxyError::BadRequest => "bad-request",
            ProxyError::PayloadTooLarge => "payload-too-large",
            ProxyError::BadDeploy(_) => "bad-deploy",
            ProxyError::ChangeInProgress => "change-in-progress",
            ProxyError::FlowStateOwned => "flow-state-owned-by-flowgate",
            ProxyError::NoController => "no-controller",
            ProxyError::ControllerUnreachable => "controller-unreachable",
        }
    }

    pub fn response(self) -> Response<Body> {
        let mut resp = Response::new(Body::full(format!("flowgate: {self}\n")));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        if matches!(
            self,
            ProxyError::NoActiveInstance
                | ProxyError::ChangeInProgress
                | ProxyError::UpstreamBusy
                | ProxyError::TooManyConnections
                | ProxyError::NoController
                | ProxyError::CredentialsUnchecked
        ) {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status_and_says_it_is_flowgate() {
        let table = [
            (ProxyError::NoActiveInstance, 503),
            (ProxyError::UpstreamConnect, 502),
            (ProxyError::UpstreamFailed, 502),
            (ProxyError::InstanceFailed, 502),
            (ProxyError::BadRequest, 400),
            (ProxyError::PayloadTooLarge, 413),
            (ProxyError::BadDeploy("x"), 400),
            (ProxyError::ChangeInProgress, 503),
            (ProxyError::FlowStateOwned, 403),
            (ProxyError::NoController, 503),
            (ProxyError::CredentialsUnchecked, 503),
            (ProxyError::ControllerUnreachable, 502),
        ];
        for (e, status) in table {
            let r = e.response();
            assert_eq!(r.status().as_u16(), status, "{e:?}");
            assert_eq!(r.headers()[ERROR_HEADER], e.code());
        }
        assert_eq!(ProxyError::NoActiveInstance.response().headers()[RETRY_AFTER], "1");
    }
}
