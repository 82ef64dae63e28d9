//! Request classification (pure): editor/admin traffic under `httpAdminRoot` versus runtime
//! traffic under `httpNodeRoot`, and websocket upgrades of each.
//!
//! With distinct roots the longer matching root decides. When both roots are the same (the
//! default "/" for both), the first path segment decides: the editor's own paths (from
//! Node-RED's routers) are editor traffic, everything else is runtime traffic.
//!
//! Paths are matched as Node-RED's routers (Express with its default settings) match them:
//! case-insensitively, with one optional trailing slash (`editor::cookie::action`), without
//! decoding percent-escapes and without collapsing `//` or dot segments (Express does neither,
//! so `/flo%77s` or `/x/../flows` never reach the deploy route there either). Matching more
//! strictly than Node-RED would let `POST /FLOWS` deploy to the active alone.

use std::borrow::Cow;

use crate::config::NodeRedPaths;

/// Route classes, for metrics and (later) routing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Editor = 0,
    EditorSocket = 1,
    Runtime = 2,
    RuntimeSocket = 3,
}

impl RouteClass {
    pub const ALL: [RouteClass; 4] =
        [RouteClass::Editor, RouteClass::EditorSocket, RouteClass::Runtime, RouteClass::RuntimeSocket];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Editor => "editor",
            RouteClass::EditorSocket => "editor_websocket",
            RouteClass::Runtime => "runtime",
            RouteClass::RuntimeSocket => "runtime_websocket",
        }
    }
}

/// First path segments (relative to httpAdminRoot) that Node-RED's editor and admin API serve.
const EDITOR_SEGMENTS: &[&str] = &[
    "",
    "auth",
    "comms",
    "context",
    "credentials",
    "debug",
    "diagnostics",
    "favicon.ico",
    "flow",
    "flows",
    "icons",
    "inject",
    "library",
    "locales",
    "nodes",
    "plugins",
    "projects",
    "red",
    "resources",
    "settings",
    "theme",
    "types",
    "vendor",
];

/// The path folded as Express compares it (ASCII case); borrowed when already lower case.
pub fn express_form(path: &str) -> Cow<'_, str> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(path.to_ascii_lowercase())
    } else {
        Cow::Borrowed(path)
    }
}

/// Whether `path` is at or below `root` (a configured root, ending in `/`), as Express mounts.
fn under(path: &str, root: &str) -> bool {
    let bare = root.trim_end_matches('/');
    path.get(..root.len()).is_some_and(|p| p.eq_ignore_ascii_case(root)) || path.eq_ignore_ascii_case(bare)
}

/// The path below httpAdminRoot in express form ("" at the root itself), or None outside it.
pub fn admin_relative<'a>(path: &'a str, admin_root: &str) -> Option<Cow<'a, str>> {
    if !under(path, admin_root) {
        return None;
    }
    Some(express_form(path.get(admin_root.len()..).unwrap_or("")))
}

/// Whether a first path segment below httpAdminRoot is one of the editor's, in any letter case.
/// Runs for every request: no allocation.
fn editor_segment(seg: &str) -> bool {
    if seg.bytes().any(|b| b.is_ascii_uppercase()) {
        EDITOR_SEGMENTS.iter().any(|s| s.eq_ignore_ascii_case(seg))
    } else {
        EDITOR_SEGMENTS.binary_search(&seg).is_ok()
    }
}

pub fn classify(path: &str, upgrade: bool, paths: &NodeRedPaths) -> RouteClass {
    let editor = if paths.admin_root == paths.node_root {
        under(path, &paths.admin_root) && {
            let rest = path.get(paths.admin_root.len()..).unwrap_or("");
            editor_segment(rest.split(['/', '?']).next().unwrap_or(""))
        }
    } else {
        let in_admin = under(path, &paths.admin_root);
        let in_node = under(path, &paths.node_root);
        in_admin && (!in_node || paths.admin_root.len() > paths.node_root.len())
    };
    match (editor, upgrade) {
        (true, false) => RouteClass::Editor,
        (true, true) => RouteClass::EditorSocket,
        (false, false) => RouteClass::Runtime,
        (false, true) => RouteClass::RuntimeSocket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(admin: &str, node: &str) -> NodeRedPaths {
        NodeRedPaths { admin_root: admin.into(), node_root: node.into() }
    }

    #[test]
    fn editor_segments_are_sorted_for_binary_search() {
        assert!(EDITOR_SEGMENTS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn shared_root_is_split_by_editor_paths() {
        let p = paths("/", "/");
        let table = [
            ("/", false, RouteClass::Editor),
            ("/comms", true, RouteClass::EditorSocket),
            ("/flows", false, RouteClass::Editor),
            ("/flows/state", false, RouteClass::Editor),
            ("/red/red.min.js", false, RouteClass::Editor),
            ("/vendor/monaco/dist/editor.js", false, RouteClass::Editor),
            ("/settings/user", false, RouteClass::Editor),
            ("/auth/token", false, RouteClass::Editor),
            ("/inject/abc", false, RouteClass::Editor),
            ("/hello", false, RouteClass::Runtime),
            ("/api/orders", false, RouteClass::Runtime),
            ("/ws/live", true, RouteClass::RuntimeSocket),
            ("/ui/", false, RouteClass::Runtime),
            ("/flowsx", false, RouteClass::Runtime),
            ("/FLOWS", false, RouteClass::Editor),
            ("/Flows/State", false, RouteClass::Editor),
            ("/Auth/Revoke", false, RouteClass::Editor),
            ("/COMMS", true, RouteClass::EditorSocket),
        ];
        for (path, up, want) in table {
            assert_eq!(classify(path, up, &p), want, "{path}");
        }
    }

    #[test]
    fn separate_roots_are_split_by_prefix() {
        let p = paths("/admin/", "/api/");
        let table = [
            ("/admin", false, RouteClass::Editor),
            ("/admin/", false, RouteClass::Editor),
            ("/admin/comms", true, RouteClass::EditorSocket),
            ("/admin/anything", false, RouteClass::Editor),
            ("/api/hello", false, RouteClass::Runtime),
            ("/flows", false, RouteClass::Runtime),
            ("/comms", true, RouteClass::RuntimeSocket),
            ("/ADMIN/flows", false, RouteClass::Editor),
            ("/Admin", false, RouteClass::Editor),
            ("/API/hello", false, RouteClass::Runtime),
        ];
        for (path, up, want) in table {
            assert_eq!(classify(path, up, &p), want, "{path}");
        }
    }

    #[test]
    fn paths_below_the_admin_root_are_folded_as_express_folds_them() {
        let rel = |p: &str, root: &str| admin_relative(p, root).map(|c| c.into_owned());
        assert_eq!(rel("/FLOWS", "/").as_deref(), Some("flows"));
        assert_eq!(rel("/Admin/Flows/", "/admin/").as_deref(), Some("flows/"));
        assert_eq!(rel("/admin", "/admin/").as_deref(), Some(""));
        assert_eq!(rel("/adminx/flows", "/admin/"), None);
        assert_eq!(rel("/flo%77s", "/").as_deref(), Some("flo%77s"), "escapes are not decoded");
    }

    #[test]
    fn nested_roots_pick_the_longer_match() {
        let p = paths("/", "/api/");
        assert_eq!(classify("/api/hello", false, &p), RouteClass::Runtime);
        assert_eq!(classify("/flows", false, &p), RouteClass::Editor);
        let p = paths("/red-admin/", "/");
        assert_eq!(classify("/red-admin/flows", false, &p), RouteClass::Editor);
        assert_eq!(classify("/hello", false, &p), RouteClass::Runtime);
    }
}
