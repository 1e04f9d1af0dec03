import { defineConfig } from "vitest/config";

// No plugin: Vite 8 compiles TSX itself (oxc). The built index.html must work under the
// service's CSP (script-src 'self'; style-src 'self'), so nothing is inlined into it.
export default defineConfig({
  oxc: { jsx: { runtime: "automatic" } },
  build: {
    outDir: "dist",
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
  server: { proxy: { "/api": "http://127.0.0.1:8000" } },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.tsx", "src/**/*.test.ts"],
    setupFiles: ["src/test-setup.ts"],
    // The suite runs beside other tests on a small CI machine: a form test that types a few
    // fields can take several seconds there, so the 5 s default fails it for load, not for a bug.
    testTimeout: 30_000,
  },
});
