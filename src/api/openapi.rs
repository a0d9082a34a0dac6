//! What the OpenAPI 3.1 document of the sessions API holds besides its
//! routes: title, description, the bearer scheme, tags. The routes and their
//! schemas come from the handlers' annotations and the protocol crate's
//! types (`router::routes`); the whole is served at `GET /v1/openapi.json`
//! and checked in as `docs/openapi.json`, which a test keeps equal to it.

use session_guard_protocol::api::Problem;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

/// What the generated paths are merged into: title, version, the bearer
/// scheme, and the schemas no path names.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "session-guard sessions API",
        description = "A user's sessions in every app, ending them, and their limits. Every \
                       route but this document needs `Authorization: Bearer sgt_...` (a token \
                       from `session-guard tokens create`); errors are RFC 9457 \
                       `application/problem+json` with a stable `type`. Sessions are named \
                       by opaque handles: the API never returns a session id.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerScheme),
    // Every error's body; the routes refer to it through `Refusals`.
    components(schemas(Problem)),
    tags(
        (name = "sessions", description = "List and end a user's sessions."),
        (name = "limits", description = "A user's limits, and operator overrides."),
        (name = "meta", description = "This document."),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the paths refer to.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_default();
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
