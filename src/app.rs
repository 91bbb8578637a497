//! Wiring (pending the controller API; see /work/notes/app.rs.pending).
