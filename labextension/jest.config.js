// Unit tests of the pure data handling (src/model.ts, src/chart.ts); the widgets are covered by
// the browser test in tests/browser/test_lab_sidebar.py.
module.exports = {
  testEnvironment: 'node',
  testMatch: ['<rootDir>/test/**/*.spec.ts'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  }
};
