// Node 18-20 and older browsers have no Symbol.asyncDispose: define it under the name
// TypeScript's `await using` looks up, so disposal works there too (the usual polyfill).
// Imported first by every module whose classes are disposable.
(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for("Symbol.asyncDispose");
export {};
