//! The pm2rs daemon (placeholder while it is written).
