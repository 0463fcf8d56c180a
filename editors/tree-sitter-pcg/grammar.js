/**
 * @file A tree-sitter grammar for pcg, the language of differentiable programs compiled to
 * predictive-coding networks. It follows the compiler's grammar (grammar/pcg.lalrpop): the
 * same items, statements, precedence (comparisons below `+ -` below `* / @` below unary minus
 * below indexing)
 * and the train block's keys and nested blocks. It is looser in one place: a function's
 * trailing result may start with `(`, `[` or `-` without `return` (the compiler refuses those,
 * tree-sitter only has to colour them).
 */

/// <reference types="tree-sitter-cli/dsl" />
// @ts-check

const PREC = { compare: 1, sum: 2, product: 3, unary: 4, postfix: 5, call: 6 };

/** Items separated by commas, with an optional trailing comma. */
function commaSep(rule) {
  return optional(seq(rule, repeat(seq(',', rule)), optional(',')));
}

module.exports = grammar({
  name: 'pcg',

  extras: $ => [/\s/, $.comment],

  word: $ => $.identifier,

  rules: {
    source_file: $ => repeat(choice($._item, ';', ',')),

    _item: $ => choice($.use, $.const, $.function, $.model, $.train),

    comment: _ => token(seq('//', /[^\n]*/)),

    use: $ => seq('use', field('module', choice($.identifier, $.string))),

    const: $ => seq('const', field('name', $.identifier), '=', field('value', $._expression)),

    function: $ => seq(
      'fn',
      field('name', $.identifier),
      field('parameters', $.parameters),
      optional(seq('->', field('return_type', $._type))),
      field('body', $.block),
    ),

    parameters: $ => seq('(', commaSep($.parameter), ')'),

    parameter: $ => seq(field('name', $.identifier), optional(seq(':', field('type', $._type)))),

    _type: $ => choice($.shape, $.tuple_type),

    shape: $ => seq('[', commaSep($._expression), ']'),

    tuple_type: $ => seq('(', commaSep($._type), ')'),

    block: $ => seq(
      '{',
      repeat(seq($._statement, optional(choice(';', ',')))),
      optional(seq(optional('return'), field('result', $._expression), optional(choice(';', ',')))),
      '}',
    ),

    model: $ => seq(
      'model',
      field('name', $.identifier),
      '{',
      repeat(seq($._statement, optional(choice(';', ',')))),
      '}',
    ),

    _statement: $ => choice(
      $.declaration,
      $.let,
      $.assignment,
      $.const,
      $.for,
      $.loss,
    ),

    declaration: $ => seq(
      field('kind', choice('input', 'target', 'param', 'frozen')),
      field('name', $.identifier),
      ':',
      field('type', $._type),
      optional(seq('=', field('init', $._expression))),
    ),

    let: $ => seq('let', field('pattern', $._pattern), '=', field('value', $._expression)),

    _pattern: $ => choice($.identifier, $.tuple_pattern),

    tuple_pattern: $ => seq('(', commaSep($._pattern), ')'),

    assignment: $ => seq(field('name', $.identifier), '=', field('value', $._expression)),

    for: $ => seq(
      'for',
      field('variable', $.identifier),
      'in',
      field('start', $._expression),
      '..',
      field('end', $._expression),
      '{',
      repeat(seq($._statement, optional(choice(';', ',')))),
      '}',
    ),

    loss: $ => seq('loss', field('value', $._expression)),

    train: $ => seq('train', field('model', $.identifier), field('body', $.train_block)),

    train_block: $ => seq('{', repeat(seq($.train_entry, optional(choice(';', ',')))), '}'),

    train_entry: $ => seq(
      field('key', choice($.identifier, alias('target', $.identifier))),
      choice(seq('=', field('value', $._expression)), field('value', $.train_block)),
    ),

    _expression: $ => choice(
      $.binary_expression,
      $.unary_expression,
      $.index_expression,
      $.call,
      $.parenthesized_expression,
      $.tuple,
      $.list,
      $.identifier,
      $.integer,
      $.float,
      $.string,
      $.boolean,
    ),

    binary_expression: $ => choice(
      // The compiler refuses a chain (`a < b < c`); tree-sitter only colours it.
      prec.left(PREC.compare, seq(
        field('left', $._expression),
        field('operator', choice('<', '>', '<=', '>=', '==', '!=')),
        field('right', $._expression),
      )),
      prec.left(PREC.sum, seq(
        field('left', $._expression),
        field('operator', choice('+', '-')),
        field('right', $._expression),
      )),
      prec.left(PREC.product, seq(
        field('left', $._expression),
        field('operator', choice('*', '/', '@')),
        field('right', $._expression),
      )),
    ),

    unary_expression: $ => prec(PREC.unary, seq('-', field('operand', $._expression))),

    index_expression: $ => prec(PREC.postfix, seq(
      field('value', $._expression),
      '[',
      commaSep(choice($._expression, $.range)),
      ']',
    )),

    range: $ => seq(
      optional(field('start', $._expression)),
      '..',
      optional(field('end', $._expression)),
    ),

    call: $ => prec(PREC.call, seq(
      field('function', $.identifier),
      '(',
      commaSep(choice($.keyword_argument, $._expression)),
      ')',
    )),

    keyword_argument: $ => seq(field('name', $.identifier), '=', field('value', $._expression)),

    parenthesized_expression: $ => seq('(', $._expression, ')'),

    tuple: $ => seq('(', $._expression, ',', commaSep($._expression), ')'),

    list: $ => seq('[', commaSep($._expression), ']'),

    identifier: _ => /[A-Za-z_][A-Za-z0-9_]*/,

    integer: _ => /[0-9]+/,

    float: _ => token(choice(
      /[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?/,
      /[0-9]+[eE][+-]?[0-9]+/,
    )),

    string: _ => /"([^"\\\n]|\\.)*"/,

    boolean: _ => choice('true', 'false'),
  },
});
