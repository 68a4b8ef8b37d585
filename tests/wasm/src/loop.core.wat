;; Core module for loop.wat: the handler spins forever (never sets a response).
(module
  (func (export "wasi:http/incoming-handler@0.2.0#handle") (param i32 i32)
    (loop $l (br $l))))
