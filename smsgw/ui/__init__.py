"""The operator's dashboard at /ui/ (docs/dashboard.md): server-rendered pages over the
REST API's own handlers, signed-in sessions, a live phone grid."""
