//! The code cache: bounded, built outside any lock, shared and cancellable builds (helper A).
