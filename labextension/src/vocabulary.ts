// Generated from lora_magic/core/events.py by its typescript(): do not edit.

export const ACTIVE_STATUSES: readonly string[] = ["running", "paused"];
export const FINISHED_STATUSES: readonly string[] = ["completed", "stopped", "failed", "interrupted"];
export const RESUMABLE_STATUSES: readonly string[] = ["stopped", "failed", "interrupted"];
export const STATUSES: readonly string[] = ["running", "paused", "completed", "stopped", "failed", "interrupted", "unreadable"];
export const EVENT_TYPES: readonly string[] = ["status", "log", "eval", "probe", "checkpoint", "warning", "rollback", "evaluation"];
export const REDONE_AT_RESUME: readonly string[] = ["eval", "probe"];
