-- cnnc's language server for .cnn files, in Neovim's built-in LSP client (Neovim 0.7 or newer).
-- Put this file in ~/.config/nvim/plugin/ (or paste it into init.lua); `cnnc` must be on PATH
-- (pip install 'cnnc[lsp]').
local cnnc_client_id = nil

vim.api.nvim_create_autocmd({ "BufRead", "BufNewFile" }, {
  pattern = "*.cnn",
  callback = function(args)
    vim.bo[args.buf].filetype = "cnn"
    vim.bo[args.buf].commentstring = "# %s"
    if cnnc_client_id == nil or vim.lsp.get_client_by_id(cnnc_client_id) == nil then
      cnnc_client_id = vim.lsp.start_client({
        name = "cnnc",
        cmd = { "cnnc", "lsp" },
        root_dir = vim.fn.getcwd(),
      })
    end
    if cnnc_client_id ~= nil then
      vim.lsp.buf_attach_client(args.buf, cnnc_client_id)
    end
  end,
})
