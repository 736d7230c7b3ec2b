;;; cnnc.el --- .cnn files with cnnc's language server, through eglot (Emacs 29 or newer)

;; A small major mode for .cnn files (comments, keywords, layer kinds), and `cnnc lsp' as its
;; language server.  Load it from init.el: (load "/path/to/cnnc.el"); `cnnc' must be on PATH
;; (pip install 'cnnc[lsp]').

(defvar cnn-mode-font-lock-keywords
  `((,(regexp-opt '("model" "block" "input" "loss") 'symbols) . font-lock-keyword-face)
    (,(regexp-opt '("conv1d" "conv2d" "maxpool1d" "maxpool2d" "avgpool1d" "avgpool2d" "global_avgpool"
                    "flatten" "dense" "dropout" "relu" "sigmoid" "tanh" "leaky_relu" "softmax"
                    "add" "concat" "batchnorm" "relu6" "silu" "hardswish"
                    "elu" "selu" "hardsigmoid" "log_softmax" "conv_transpose1d" "conv_transpose2d"
                    "global_maxpool" "lrn" "channel_shuffle") 'symbols)
     . font-lock-builtin-face)
    ("\\_<\\([A-Za-z_][A-Za-z0-9_]*\\)\\s-*=" 1 font-lock-variable-name-face)
    (,(regexp-opt '("true" "false" "same" "valid" "none" "cross_entropy" "mse" "nll") 'symbols)
     . font-lock-constant-face)))

(define-derived-mode cnn-mode prog-mode "cnn"
  "Major mode for .cnn network specs."
  (setq-local comment-start "# ")
  (setq-local comment-start-skip "#+\\s-*")
  (modify-syntax-entry ?# "<" cnn-mode-syntax-table)
  (modify-syntax-entry ?\n ">" cnn-mode-syntax-table)
  (modify-syntax-entry ?_ "_" cnn-mode-syntax-table)
  (setq-local font-lock-defaults '(cnn-mode-font-lock-keywords)))

(add-to-list 'auto-mode-alist '("\\.cnn\\'" . cnn-mode))

(with-eval-after-load 'eglot
  (add-to-list 'eglot-server-programs '(cnn-mode "cnnc" "lsp")))

(add-hook 'cnn-mode-hook #'eglot-ensure)

(provide 'cnnc)
;;; cnnc.el ends here
