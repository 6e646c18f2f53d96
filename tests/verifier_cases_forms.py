"""Hand-written (question, gold, response, expected_correct, comment) cases for answer forms that need
more than the final answer to grade: multi-part answers, several boxes, labels, percents, leftover
formatting, one-line sentences, sets against lists, multiple choice and plus-minus.

Each entry of ``FORM_CASES`` is ``(question, gold, response, expected_correct, comment)``:

* ``question`` is the problem text the verifier receives with the pair, or ``None`` when the verdict does
  not depend on it. Labels ("a + b = 12" when $a+b$ is asked for), ordered answers ("respectively",
  "(a) ... (b) ...") and option letters (a question listing "(A) 10 (B) 12 ...") are read from it.
* ``gold`` is the reference answer as data sets store it: bare LaTeX, a list of ``$...$`` math spans
  ("$x=2$, $x=-6$"), words joining values ("1 and 2 and 3", "5 or 7"), HTML ("2<sup>n</sup>") or
  full-width symbols ("x＞2").
* ``response`` is a short model output in the forms real models produce: a chain of thought ending in
  ``\\boxed{...}``, "The final answer is $...$. I hope it is correct.", "**Final Answer:** \\(...\\)",
  a bare answer, a one-line sentence, or GSM8K "#### N".
* ``expected_correct`` is what a careful, strict human grader says. A false positive is worse than a miss.
* ``comment`` names the form and says why the pair is (or is not) equal.

The rules are those of ``tests/verifier_cases.py`` (the final answer, labels, rounded golds, order), with
these readings of the forms below:

* A gold listing several solutions is a multiset: any order, but every value once, none extra, none
  wrong. A hedge ("Maybe 3 or 4") is not a list of solutions.
* Several boxes joined by words on the final line are one answer together. They are ordered when the
  question or the gold is ordered ("respectively", "(a) ... (b) ..."), unordered otherwise.
* A label is dropped only when it names what the question asks for (an expression such as $a+b$ or
  $|p-q|$, a named quantity such as $\\cos\\phi$) or is a single name with a subscript ("m_{\\max}").
  An equation left unsolved, or a label on another quantity, does not state the asked value.
* A gold with a percent sign states a quantity: its value over 100 is the same quantity ("62.5\\%" vs
  0.625), at the gold's printed precision. A gold without a sign is never rescaled ("0.5" vs "50\\%" is
  wrong); a percent sign on the response alone is a unit and is dropped ("20" vs "20\\%").
* An ordered pair is not a set, and a set is not an ordered pair; a list of pairs equals the set of
  the same pairs.
* With the options listed in the question, an option's value stands for its letter.
* "\\pm a" is the two values a and -a.
"""

from __future__ import annotations

_Q_ROOTS_CUBIC = r"Find all positive integers $n$ for which $n^3 - 6n^2 + 11n - 6 = 0$."
_Q_PRIME = r"A prime $p$ satisfies $p^2 - 12p + 35 = 0$. What can $p$ be?"
_Q_QUADRATIC = r"Solve $x^2 + 4x - 12 = 0$."
_Q_FUNCTIONS = r"Find all linear functions $f$ with $f(f(x)) = x$ for all real $x$ and $f(1) = 1$."

_Q_POINTS = r"Find the points where the line $y = x + 1$ meets the parabola $y = x^2 - 3x + 4$."
_Q_MEAN_MEDIAN = r"Find the mean and the median, respectively, of the list $1, 2, 4, 4, 4$."
_Q_PARTS = r"(a) Find the mean of the list $1, 2, 4, 4, 4$. (b) Find its median."
_Q_CONSECUTIVE = r"Find all pairs of consecutive integers $n, n+1$ whose product is $110$."

_Q_SUM = r"Let $a$ and $b$ be the roots of $x^2 - 12x + 35 = 0$. Find $a + b$."
_Q_SUM_AB = r"Positive integers $a$ and $b$ satisfy $a - b = 2$ and $ab = 35$. Find $a + b$."
_Q_ABS = r"The roots of $x^2 - 3x - 10 = 0$ are $p$ and $q$. Find $|p - q|$."
_Q_COS = (r"Vectors $\mathbf{u}$ and $\mathbf{v}$ have $\|\mathbf{u}\| = 3$, $\|\mathbf{v}\| = 2$ and "
          r"$\mathbf{u} \cdot \mathbf{v} = 2$. If $\phi$ is the angle between them, find $\cos\phi$.")
_Q_PRODUCT = r"If $a + b = 7$ and $a^2 + b^2 = 29$, find $ab$."
_Q_SOLVE_X = r"Solve $3x - 5 = x + 15$ for $x$."
_Q_FIND_A = r"Given $b = 10$ and $a - b = 2$, find $a$."
_Q_FIND_N = r"If $m + n = 9$ and $m - n = 3$, find $n$."

_Q_CHOICE = r"Which of the following equals $3 \cdot 4$? (A) 10 (B) 12 (C) 14 (D) 16"
_Q_CHOICE_SQRT = r"Which of the following equals $\sqrt{50}$? (A) $5\sqrt{2}$ (B) $2\sqrt{5}$ (C) $25$ (D) $10\sqrt{5}$"

FORM_CASES: list[tuple[str | None, str, str, bool, str]] = [
    # --- 1. multi-part answers: a gold list of math spans or words against a listed answer ---
    (None, r"$3$,$\frac{1}{2}$", r"Both values satisfy the system, so the answer is $\boxed{3, \frac12}$.", True,
     "math-span list gold vs a boxed comma list; \\frac12 is 1/2, same two values"),
    (_Q_QUADRATIC, r"$x=2$, $x=-6$", r"Factoring gives $(x-2)(x+6)=0$, so $x = \boxed{2 \text{ and } -6}$.", True,
     "labelled math-span list vs a boxed 'and' list of the same two roots"),
    (_Q_QUADRATIC, r"$x=2$, $x=-6$", r"\boxed{x=-6, x=2}", True,
     "the same two roots in the other order: a list of solutions is a multiset"),
    (_Q_FUNCTIONS, r"$f(x)=x$,$f(x)=2-x$", r"\boxed{f(x) = x \text{ or } f(x) = 2 - x}", True,
     "list of functions vs a boxed 'or' of the same two functions"),
    (_Q_FUNCTIONS, r"$f(x)=x$,$f(x)=2-x$", r"**Final Answer:** \(f(x) = 2 - x\) and \(f(x) = x\)", True,
     "the same two functions in the other order under a Final Answer heading"),
    (_Q_ROOTS_CUBIC, "1 and 2 and 3", r"The final answer is $3, 1, 2$. I hope it is correct.", True,
     "'and'-joined gold vs a comma list of the same three roots, reordered"),
    (_Q_PRIME, "5 or 7", r"Since $(p-5)(p-7)=0$, $p = \boxed{7 \text{ or } 5}$.", True,
     "'or'-joined gold vs a boxed 'or' of the same two primes, reordered"),
    (None, r"$3$,$\frac{1}{2}$", r"\boxed{3}", False,
     "one value only: the gold also needs 1/2"),
    (None, r"$3$,$\frac{1}{2}$", r"\boxed{3, 2}", False,
     "wrong value: 2 in place of 1/2"),
    (_Q_QUADRATIC, r"$x=2$, $x=-6$", r"So the roots are $\boxed{x = 2 \text{ or } x = 6}$.", False,
     "wrong value: 6 has the wrong sign, the root is -6"),
    (_Q_QUADRATIC, r"$x=2$, $x=-6$", r"\boxed{x = 2}", False,
     "one root only: -6 is missing"),
    (_Q_ROOTS_CUBIC, "1 and 2 and 3", r"\boxed{1, 2}", False,
     "one value missing: 3 is also a root"),
    (_Q_ROOTS_CUBIC, "1 and 2 and 3", r"The final answer is $1, 2, 3, 6$. I hope it is correct.", False,
     "an extra value: 6 is not a root"),
    (_Q_PRIME, "5 or 7", r"\boxed{5, 7, 11}", False,
     "an extra value: 11 does not satisfy the equation"),
    (_Q_PRIME, "5 or 7", "#### 7", False,
     "one value only: p can also be 5"),
    (_Q_FUNCTIONS, r"$f(x)=x$,$f(x)=2-x$", r"\boxed{f(x) = x}", False,
     "one function only: f(x) = 2 - x is missing"),
    (_Q_FUNCTIONS, r"$f(x)=x$,$f(x)=2-x$", r"\boxed{f(x) = x \text{ or } f(x) = x - 2}", False,
     "wrong second function: x - 2 is not 2 - x"),

    # --- 2. several boxes joined by words on the final line ---
    (_Q_POINTS, "(1,2), (3,4)",
     r"The intersection points are $\boxed{(1, 2)} \quad \text{and} \quad \boxed{(3, 4)}$.", True,
     "two boxed points joined by \\text{and}: together the gold's two points"),
    (_Q_POINTS, "(1,2), (3,4)", r"Solving $x^2 - 4x + 3 = 0$ gives $\boxed{(3, 4)}$ and $\boxed{(1, 2)}$.", True,
     "two boxed points in the other order: the points are unordered"),
    (_Q_POINTS, "(1,2), (3,4)", r"The intersection point is $\boxed{(1, 2)}$.", False,
     "one box only: the point (3, 4) is missing"),
    (_Q_POINTS, "(1,2), (3,4)", r"$\boxed{(1, 2)} \quad \text{and} \quad \boxed{(4, 3)}$", False,
     "second box has its coordinates swapped: (4, 3) is not (3, 4)"),
    (_Q_MEAN_MEDIAN, "3, 4 respectively",
     r"The sum is $15$, so the mean and median are $\boxed{3}$ and $\boxed{4}$, respectively.", True,
     "two boxes with 'respectively' in the gold's order: mean 3, median 4"),
    (_Q_MEAN_MEDIAN, "3, 4 respectively", r"$\boxed{4}$ and $\boxed{3}$, respectively.", False,
     "ordered gold, boxes swapped with 'respectively': says the mean is 4"),
    (_Q_MEAN_MEDIAN, "3, 4 respectively", r"The mean is $\boxed{3}$.", False,
     "one box only: the median is missing"),
    (_Q_PARTS, "(a) 3 (b) 4", r"(a) $\boxed{3}$ \quad (b) $\boxed{4}$", True,
     "parts labelled (a) and (b), each boxed, matching the ordered gold"),
    (_Q_PARTS, "(a) 3 (b) 4", r"The answers are $\boxed{4}$ and $\boxed{3}$, respectively.", False,
     "ordered parts given in the wrong order: (a) would be 4"),
    (_Q_PARTS, "(a) 3 (b) 4", r"(a) $\boxed{3}$ \quad (b) $\boxed{3}$", False,
     "part (b) is wrong: the median is 4"),
    (_Q_CONSECUTIVE, r"$10,11$ and $-11,-10$", r"\boxed{10,11} \quad\text{and}\quad \boxed{-11,-10}", True,
     "two boxed pairs joined by \\text{and}: the gold's two pairs"),
    (_Q_CONSECUTIVE, r"$10,11$ and $-11,-10$", r"\boxed{-11,-10} \quad\text{and}\quad \boxed{10,11}", True,
     "the two pairs in the other order: the solutions are unordered"),
    (_Q_CONSECUTIVE, r"$10,11$ and $-11,-10$", r"\boxed{10,11}", False,
     "one box only: the negative pair is missing"),
    (_Q_CONSECUTIVE, r"$10,11$ and $-11,-10$", r"\boxed{10,11} \quad\text{and}\quad \boxed{-10,-9}", False,
     "second pair is wrong: (-10)(-9) = 90, not 110"),

    # --- 3. labelled final answers: the label is an expression or a named quantity ---
    (_Q_SUM, "12", r"By Vieta's formulas, $\boxed{a + b = 12}$.", True,
     "label a + b is exactly what the question asks for, so the value 12 is the answer"),
    (_Q_SUM_AB, "12", r"**Final Answer:** \(a+b = 12\)", True,
     "Final Answer heading with the asked expression a+b as the label"),
    (_Q_ABS, "7", r"The roots are $5$ and $-2$, so $\boxed{|p - q| = 7}$.", True,
     "label |p - q| is the asked quantity"),
    (_Q_COS, r"\frac{1}{3}", r"$\cos\phi = \frac{2}{3 \cdot 2}$, so $\boxed{\cos\phi = \frac{1}{3}}$.", True,
     "named quantity cos(phi) is the asked quantity; value 1/3"),
    (_Q_PRODUCT, "10", r"$2ab = 49 - 29 = 20$, so $\boxed{ab = 10}$.", True,
     "label ab is the asked product, so 10 is its stated value"),
    (None, "n^2 - 1", r"Hence the maximum is attained at the end: $\boxed{m_{\max} = n^2 - 1}$.", True,
     "a single name with a subscript is a label even without the question"),
    (_Q_SOLVE_X, "10", r"Collecting terms, $\boxed{2x = 10}$.", False,
     "unsolved equation: 2x = 10 says x = 5, and the question asks for x"),
    (_Q_SOLVE_X, "10", r"\boxed{x + 1 = 10}", False,
     "unsolved equation: x + 1 = 10 says x = 9, not 10"),
    (_Q_FIND_A, "12", r"\boxed{a + b = 12}", False,
     "the question asks for a, not a + b; a + b = 12 would give a = 2"),
    (_Q_FIND_N, "3", r"Subtracting the equations, $\boxed{m - n = 3}$.", False,
     "label on m - n, a given the question does not ask for: n is not stated"),
    (_Q_SUM_AB, "12", r"**Final Answer:** \(a = 7\)", False,
     "a label on a, not the asked a + b; 7 is not 12"),
    (_Q_SUM_AB, "12", r"**Final Answer:** \(a+b = 13\)", False,
     "the asked label with the wrong value"),
    (None, "n^2 - 1", r"$\boxed{m_{\max} = n^2 + 1}$", False,
     "subscripted label with the wrong constant"),

    # --- 4. percent: a percent gold states a quantity; a gold without a sign is never rescaled ---
    (None, r"62.5\%", r"The probability is $\boxed{0.625}$.", True,
     "percent gold 62.5% is the quantity 0.625"),
    (None, r"62.5\%", r"$\frac{5}{8}$ of the marbles are red, so the answer is $\boxed{\frac{5}{8}}$.", True,
     "percent gold 62.5% is the quantity 5/8"),
    (None, r"50\%", r"The final answer is $0.5$. I hope it is correct.", True,
     "percent gold 50% is the quantity 0.5"),
    (None, r"5\%", r"The rate is $\boxed{0.05}$.", True,
     "percent gold 5% is the quantity 0.05"),
    (None, r"33.3\%", r"\boxed{\frac13}", True,
     "1/3 = 33.33...% rounds to the gold 33.3% at its printed precision"),
    (None, "20", r"The price falls by $4$ out of $20$, so the discount is $\boxed{20\%}$.", True,
     "gold 20 of a 'what percent' question: the sign on the answer is a unit, dropped"),
    (None, "0.5", r"\boxed{50\%}", False,
     "a gold without a sign is never rescaled: 50% is not read as 0.5"),
    (None, "0.05", r"The final answer is $5\%$. I hope it is correct.", False,
     "a gold without a sign is never rescaled: 5% with the sign dropped is 5, not 0.05"),
    (None, "20", r"\boxed{0.2}", False,
     "gold 20 has no sign: 0.2 is not 20"),
    (None, r"6.25\%", r"\boxed{0.625}", False,
     "6.25% is 0.0625; 0.625 is off by a factor of 10"),
    (None, r"62.5\%", r"\boxed{6.25}", False,
     "6.25 is neither 62.5 nor 0.625"),
    (None, r"12.5\%", r"\boxed{0.0125}", False,
     "12.5% is 0.125; 0.0125 is off by a factor of 10"),
    (None, r"33.3\%", r"\boxed{0.3}", False,
     "0.3 is 30%, not 33.3%"),

    # --- 5. formatting left in the gold: separators, spacing commands, HTML, full-width symbols ---
    (None, r"11,\!111", r"The count is $\boxed{11111}$.", True,
     "the ,\\! thousands separator is formatting: 11,111 = 11111"),
    (None, r"11,\!111", r"\boxed{11{,}111}", True,
     "both sides carry thousands separators in different LaTeX spellings"),
    (None, r"11,\!111", r"\boxed{11112}", False,
     "the last digit differs: 11112 is not 11111"),
    (None, r"11,\!111", r"\boxed{1111}", False,
     "a digit dropped: 1111 is not 11111"),
    (None, r"\, ( -\sqrt{3},\ \sqrt{3} ) " + "\\", r"Therefore $\boxed{(-\sqrt{3}, \sqrt{3})}$.", True,
     "spacing commands and a trailing backslash around the gold tuple are formatting"),
    (None, r"\, ( -\sqrt{3},\ \sqrt{3} ) " + "\\", r"\boxed{(-\sqrt{3}, \sqrt{2})}", False,
     "second entry sqrt 2 is not sqrt 3"),
    (None, r"\, ( -\sqrt{3},\ \sqrt{3} ) " + "\\", r"\boxed{[-\sqrt{3}, \sqrt{3}]}", False,
     "closed brackets for the gold's open parentheses"),
    (None, r"\left[ 1, 2 \right]", r"The range is $\boxed{[1,2]}$.", True,
     "\\left[ \\right] sizing around the gold interval is formatting"),
    (None, r"\left[ 1, 2 \right]", r"\boxed{[1, 2)}", False,
     "half-open interval: the endpoint 2 is excluded"),
    (None, "2<sup>n</sup> ≥ n<sup>3</sup>", r"So for all such $n$, $\boxed{2^n \geq n^3}$.", True,
     "HTML <sup> tags are exponents: 2^n >= n^3"),
    (None, "2<sup>n</sup> ≥ n<sup>3</sup>", r"\boxed{2^n \geq n^2}", False,
     "HTML gold keeps both exponents: n^2 is not n^3"),
    (None, "3<sup>4</sup>", r"\boxed{81}", True,
     "HTML exponent: 3^4 = 81"),
    (None, "3<sup>4</sup>", r"\boxed{34}", False,
     "stripping the tags without the exponent gives 34, which is not 3^4 = 81"),
    (None, "x＞2", r"\boxed{x > 2}", True,
     "full-width greater-than sign is >"),
    (None, "x＞2", r"\boxed{x \geq 2}", False,
     "x >= 2 includes 2; the gold is strict"),
    (None, "（1，2）", r"The point is $\boxed{(1, 2)}$.", True,
     "full-width parentheses and comma around the same pair"),
    (None, "（1，2）", r"\boxed{(2, 1)}", False,
     "full-width pair gold, coordinates swapped"),
    (None, "（1，2）", r"\boxed{(1, 3)}", False,
     "full-width pair gold, second coordinate differs"),

    # --- 6. a one-line sentence taken as the answer ---
    (None, "x<3", r"We find that $x \lt 3$.", True,
     "one-line sentence: the math inside, x < 3 (\\lt), is the gold"),
    (None, r"x \ne 5", r"The solution is $x \neq 5$", True,
     "one-line sentence: \\neq is \\ne"),
    (None, r"\frac{3}{4}", r"The probability is therefore $\frac{3}{4}$.", True,
     "one-line sentence stating the value 3/4"),
    (None, "12", r"Thus she has $12$ marbles left.", True,
     "one-line sentence with one number and a counted noun"),
    (None, "5", r"It is not $5$.", False,
     "the sentence denies 5: it does not answer 5"),
    (None, "x<3", r"We find that $x \lt 4$.", False,
     "x < 4 is a different bound"),
    (None, "x<3", r"We find that $x \le 3$.", False,
     "x <= 3 includes 3; the gold is strict"),
    (None, "5", r"$5$ is not possible.", False,
     "the sentence rules 5 out"),
    (None, "3", r"Maybe $3$ or $4$.", False,
     "a hedge between two values, not one answer"),
    (None, r"x \ne 5", r"The solution is $x = 5$.", False,
     "x = 5 is the excluded value, the opposite of the gold"),

    # --- 7. set vs list ---
    (None, r"$(3,2),(-3,2)$", r"The solutions are $\boxed{\{(3,2),(-3,2)\}}$.", True,
     "list of pairs vs the set of the same pairs"),
    (None, r"$(3,2),(-3,2)$", r"\boxed{(-3,2), (3,2)}", True,
     "list of pairs in the other order"),
    (None, r"$(3,2),(-3,2)$", r"\boxed{\{(-3, 2), (3, 2)\}}", True,
     "set of the same pairs in the other order"),
    (None, r"\{1,2\}", r"\boxed{\{2, 1\}}", True,
     "a set with its elements in another order"),
    (None, r"$(3,2),(-3,2)$", r"\boxed{\{(3,2)\}}", False,
     "set missing the pair (-3, 2)"),
    (None, r"$(3,2),(-3,2)$", r"\boxed{\{(3,2),(-3,2),(0,0)\}}", False,
     "set with an extra pair (0, 0)"),
    (None, r"$(3,2),(-3,2)$", r"\boxed{\{(2,3),(2,-3)\}}", False,
     "each pair has its coordinates swapped: pairs are ordered"),
    (None, "(1,2)", r"\boxed{\{1, 2\}}", False,
     "one ordered pair gold vs a set: a set is not a tuple"),
    (None, r"\{1,2\}", r"\boxed{(1,2)}", False,
     "set gold vs an ordered pair: a tuple is not a set"),

    # --- 8. multiple choice with the options listed in the question ---
    (_Q_CHOICE, "B", r"$3 \cdot 4 = 12$, so the answer is $\boxed{12}$.", True,
     "the value 12 is option (B)'s value, so it maps to B"),
    (_Q_CHOICE, "B", r"\boxed{B}", True,
     "the letter itself"),
    (_Q_CHOICE, "B", r"The answer is (B) 12.", True,
     "letter and its value together, both B"),
    (_Q_CHOICE, "B", r"\boxed{14}", False,
     "14 is option (C)'s value, not (B)'s"),
    (_Q_CHOICE, "B", r"\boxed{A \text{ or } B}", False,
     "a hedge between two options"),
    (_Q_CHOICE, "B", r"\boxed{13}", False,
     "13 is no option's value"),
    (_Q_CHOICE, "B", r"\boxed{C}", False,
     "a different letter"),
    (_Q_CHOICE_SQRT, "A", r"Since $50 = 25 \cdot 2$, $\sqrt{50} = \boxed{5\sqrt{2}}$.", True,
     "the value 5 sqrt 2 is option (A)'s value"),
    (_Q_CHOICE_SQRT, "A", r"\boxed{2\sqrt{5}}", False,
     "2 sqrt 5 is option (B)'s value"),

    # --- 9. plus-minus ---
    (None, r"$2$, $-2$", r"\boxed{\pm 2}", True,
     "math-span list of 2 and -2 vs \\pm 2, the same two values"),
    (None, "2, -2", r"Taking square roots, $x = \boxed{\pm 2}$.", True,
     "comma list gold vs a labelled \\pm 2"),
    (None, r"\pm 2", r"The final answer is $-2, 2$. I hope it is correct.", True,
     "\\pm gold vs the two values listed"),
    (None, r"1 \pm \sqrt{2}", r"\boxed{1+\sqrt2, 1-\sqrt2}", True,
     "\\pm gold vs both roots listed"),
    (None, r"1 \pm \sqrt{2}", r"The roots are $\boxed{1-\sqrt{2}}$ and $\boxed{1+\sqrt{2}}$.", True,
     "\\pm gold vs the two roots in two boxes, other order"),
    (None, r"$2$, $-2$", r"\boxed{2}", False,
     "one value only: -2 is missing"),
    (None, "2, -2", r"\boxed{\pm 3}", False,
     "\\pm 3 is 3 and -3, not 2 and -2"),
    (None, r"$2$, $-2$", r"\boxed{\pm\sqrt{2}}", False,
     "\\pm sqrt 2 is not \\pm 2"),
    (None, r"1 \pm \sqrt{2}", r"\boxed{1+\sqrt{2}}", False,
     "one root only: 1 - sqrt 2 is missing"),
    (None, r"1 \pm \sqrt{2}", r"\boxed{-1 \pm \sqrt{2}}", False,
     "the centre has the wrong sign"),
]

# The refusals that guard plain math-verify's credit, and the plain path itself, each with a case it
# refuses and a neighbour it lets through (the forms come from final-answer-only data: JSON fragments,
# an option letter with its value, a gold that spells one value twice).
FORM_CASES += [
    (None, "a. 3, b. 4", '{\n  "a": 5,\n  "b": 4\n}', False,
     "list_mismatch: plain math-verify matches the last value 4; part a is 5, not 3"),
    (None, "a. 3, b. 4", "(a) 3 (b) 4", True, "an enumerated answer with both parts right, in order"),
    (None, "a. 3, b. 4", "(a) 4 (b) 3", False, "an enumerated answer with the parts swapped"),
    (None, r"$\frac{\sqrt{2}\pi}{4}$ or $\frac{\pi}{2\sqrt{2}}$", r"\frac{\pi}{2\sqrt{2}}", True,
     "a gold spelling one value two ways: either spelling is the answer, not half of a list"),
    (None, r"$\frac{\sqrt{2}\pi}{4}$ or $\frac{\pi}{2\sqrt{2}}$", r"\frac{\pi}{2}", False,
     "a gold spelling one value two ways, against another value"),
    (r"$\cos^{-1}(1/2) =$ A) $\frac{\pi}{6}$ B) $\frac{\pi}{4}$ C) $\frac{\pi}{3}$ D) $\frac{\pi}{2}$", "A",
     r"A) $\frac{\pi}{3}$", False, "option_mismatch: the letter says A, the value stated is option C's"),
    (r"$\cos^{-1}(1/2) =$ A) $\frac{\pi}{6}$ B) $\frac{\pi}{4}$ C) $\frac{\pi}{3}$ D) $\frac{\pi}{2}$", "C",
     r"C) $\frac{\pi}{3}$", True, "letter and value agree on option C"),
    (r"$\cos^{-1}(1/2) =$ A) $\frac{\pi}{6}$ B) $\frac{\pi}{4}$ C) $\frac{\pi}{3}$ D) $\frac{\pi}{2}$", "C",
     r"$\frac{\pi}{3}$", True, "option C's value alone names option C"),
    (None, "5", r"So $x = \boxed{5}$. Note that the answer is independent of the choice of $y$.", True,
     "a later phrase in prose is no answer: the box is"),
    (None, "6", r"So $x = \boxed{5}$. Note that the answer is independent of the choice of $y$.", False,
     "the box is read and it is wrong"),
    (None, "5", r"Solving, $\boxed{5}$. Hence the answer is $x$.", True,
     "math_verify decides: the project reads the later 'the answer is $x$', plain math-verify the box"),
]
