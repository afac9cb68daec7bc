//! The error every API handler answers with: an HTTP status and a message
//! that names the problem (rendered as `{"error": "..."}` by the routers).

/// An API error: HTTP status and message.
#[derive(Debug)]
pub struct ApiError(pub u16, pub String);

/// A 400 naming what is wrong with the request.
pub fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(400, msg.into())
}
