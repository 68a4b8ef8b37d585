;; Core module for bomb.wat: grows linear memory by 1 MiB (16 pages) at a time
;; until memory.grow fails (returns -1), then traps.
(module
  (memory 1)
  (func (export "wasi:http/incoming-handler@0.2.0#handle") (param i32 i32)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))
