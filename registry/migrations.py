"""Ordered, named schema migrations of the DuckDB catalog.

Append new migrations; never edit one that has shipped. Each runs once, in
order, inside the transaction that records it in `schema_migrations`.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_initial",
        """
        CREATE TABLE artifacts (
            id VARCHAR PRIMARY KEY,            -- content id: xxh3-128 of the files, hex
            name VARCHAR NOT NULL,
            version INTEGER NOT NULL,          -- 1, 2, ... per name
            kind VARCHAR NOT NULL,             -- model | adapter | merge | checkpoint
            created_at TIMESTAMPTZ NOT NULL,
            source_path VARCHAR,               -- where it was added from
            size_bytes BIGINT NOT NULL,        -- sum of its files' sizes
            n_tensors INTEGER NOT NULL,
            method VARCHAR,                    -- free text: sft, dpo, lora, ties, ...
            config JSON,                       -- config.json
            adapter_config JSON,               -- adapter_config.json
            safetensors_metadata JSON,         -- __metadata__ of the first weights file
            user_metadata JSON,                -- --meta key=value pairs
            UNIQUE (name, version)
        );
        CREATE TABLE tensors (
            artifact_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            dtype VARCHAR NOT NULL,            -- safetensors dtype: F32, BF16, ...
            shape BIGINT[] NOT NULL,
            nbytes BIGINT NOT NULL,
            blob VARCHAR NOT NULL,             -- xxh3-128 of the tensor's bytes
            file VARCHAR NOT NULL,             -- the safetensors file it sits in
            position INTEGER NOT NULL,         -- its index in that file's data order
            file_offset BIGINT NOT NULL        -- byte offset of its data in that file
        );
        CREATE TABLE files (
            artifact_id VARCHAR NOT NULL,
            path VARCHAR NOT NULL,             -- relative to the artifact's folder
            role VARCHAR NOT NULL,             -- weights | companion
            size_bytes BIGINT NOT NULL,
            blob VARCHAR NOT NULL,             -- companion: the file; weights: its header
            metadata JSON                      -- weights: the file's __metadata__
        );
        CREATE TABLE edges (
            child_id VARCHAR NOT NULL,
            parent_id VARCHAR NOT NULL,
            -- finetune | adapter | merge | quantized | checkpoint
            relation VARCHAR NOT NULL,
            method VARCHAR
        );
        CREATE INDEX tensors_by_artifact ON tensors (artifact_id);
        CREATE INDEX tensors_by_blob ON tensors (blob);
        """,
    ),
)

LATEST = len(MIGRATIONS)
