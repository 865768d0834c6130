"""The qdispatch job service: REST + WebSocket API, job store, executors and backends."""
