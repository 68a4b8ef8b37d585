;; Core module for noexport.wat: a component of another world. It exports
;; wasi:cli/run@0.2.0 (run: func() -> result) instead of
;; wasi:http/incoming-handler@0.2.0, so it is not a wasi:http/proxy component.
(module
  (func (export "wasi:cli/run@0.2.0#run") (result i32)
    i32.const 0))
