;; A plain core module, not a component: a component host must reject it.
(module)
