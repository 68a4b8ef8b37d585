;; Core module for trap.wat: the handler traps immediately.
(module
  (func (export "wasi:http/incoming-handler@0.2.0#handle") (param i32 i32)
    unreachable))
